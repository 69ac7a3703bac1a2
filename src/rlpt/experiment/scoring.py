"""Scoring for `rlpt experiment`: the held-out sets, and every metric of one model on them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlpt import THINK_CLOSE, THINK_OPEN, checkpoint
from rlpt.data import Context
from rlpt.errors import UserError
from rlpt.evaluate import exact_match_accuracy, intrinsic, load_eval_set
from rlpt.experiment.budgets import Budget
from rlpt.generation import temperature_sampler
from rlpt.models import load_model_and_tokenizer
from rlpt.suites import ANSWER_TOKENS, Problem


@dataclass(frozen=True)
class EvalSet:
    """A held-out set: a suite's questions (with their worked thoughts) or a user's question/answer JSONL."""

    name: str
    problems: list[Problem]

    def tasks(self) -> list[dict]:
        return [p.task() for p in self.problems]


def suite_eval_set(suite, questions: int) -> EvalSet:
    return EvalSet(suite.name.capitalize(), suite.heldout_problems(questions))


SELECTION_SEED = 777  # the training-side problems that settings are judged on (docs/experiments.md)


def suite_training_set(suite, questions: int) -> EvalSet:
    """Training-side problems of a suite, the side its corpora come from: what the warm start's length and other
    settings are judged on, never the held-out questions."""
    return EvalSet(f"{suite.name.capitalize()} (training side)", suite.problems(questions, SELECTION_SEED, heldout=False))


def file_eval_set(path: str, questions: int) -> EvalSet:
    pairs, _ = load_eval_set(path, questions)
    if not pairs:
        raise UserError(f"--tasks {path}: no {{'question': ..., 'answer': ...}} line")
    return EvalSet(Path(path).stem, [Problem(q["question"], "", q["answer"]) for q in pairs])


def answer_contexts(tokenizer, problems: list[Problem]) -> list:
    """One context per problem, at the first token of its answer (where RLP puts its thought), scoring the whole
    answer (ANSWER_TOKENS, cut at the document's end): the information gain of thinking there."""
    contexts = []
    for i, p in enumerate(problems):
        ids, t = tokenizer(p.plain())["input_ids"], len(tokenizer(p.question)["input_ids"])
        contexts.append(Context(doc=i, position=t, prefix=tuple(ids[:t]), target=ids[t],
                                continuation=tuple(ids[t + 1 : t + ANSWER_TOKENS])))
    return contexts


def evaluate_model(folder: Path, eval_sets: list[EvalSet], budget: Budget, seed: int) -> dict:
    """Per held-out set: pass@1 with thinking (k sampled thoughts), greedy accuracy with and without thinking, how
    often the greedy thought is the worked one (suites only), and the intrinsic metric; the first two also per
    question, for the paired intervals."""
    model, tokenizer, think = load_model_and_tokenizer(str(folder))
    out = {}
    for eval_set in eval_sets:
        problems, tasks = eval_set.problems, eval_set.tasks()

        def accuracy(use_thought: bool, **kwargs) -> dict:
            return exact_match_accuracy(model, tokenizer, think, tasks, use_thought=use_thought,
                                        max_thought_tokens=budget.thought_tokens, **kwargs)

        greedy = accuracy(True)
        samples = [accuracy(True, choose_thought=temperature_sampler(0.7, seed * 1000 + k))["correct"]
                   for k in range(budget.samples)]
        per_question = [sum(hits) / len(hits) for hits in zip(*samples)]  # pass@1 of each question
        gains = intrinsic(model, tokenizer, think, answer_contexts(tokenizer, problems),
                          max_thought_tokens=budget.thought_tokens)
        first, direct = greedy["outputs"][0], accuracy(False)
        out[eval_set.name] = dict(
            accuracy_think=greedy["accuracy"], pass_at_1=sum(per_question) / len(per_question),
            per_question=dict(pass_at_1=per_question, accuracy_think=[float(c) for c in greedy["correct"]],
                              accuracy_nothink=[float(c) for c in direct["correct"]],
                              information_gain=gains.pop("gains")),
            accuracy_nothink=direct["accuracy"],
            thought_correct=greedy.get("thought_correct"),  # None without worked thoughts (a user's question set)
            **gains,
            example=dict(question=tasks[0]["question"], thought=first["thought"], answer=first["answer"],
                         expected=tasks[0]["answer"]),
        )
    return out


def answer_mode(folder: Path, suites, budget: Budget) -> dict:
    """How a model answers best, chosen on training-side questions (never held-out ones): greedy accuracy with a
    thought and without one on each suite's `selection_questions` training-side problems, and the better mode
    ("think" on a tie: RLP's). Beside them, `given`: the accuracy after the worked thought, written for the model
    (what a right thought gives). Without a suite (a user's --tasks alone) there is no training side: "think"."""
    if not suites:
        return dict(mode="think", think=None, direct=None, given=None)
    model, tokenizer, think = load_model_and_tokenizer(str(folder))
    tasks = [t for s in suites for t in suite_training_set(s, budget.selection_questions).tasks()]
    scored = {mode: exact_match_accuracy(model, tokenizer, think, tasks, use_thought=mode == "think",
                                         max_thought_tokens=budget.thought_tokens)["accuracy"]
              for mode in ("think", "direct")}
    after_thought = [{**t, "question": f"{t['question']}{THINK_OPEN}{t['thought']}{THINK_CLOSE}"} for t in tasks]
    given = exact_match_accuracy(model, tokenizer, think, after_thought, use_thought=False, max_thought_tokens=1)
    return dict(mode="think" if scored["think"] >= scored["direct"] else "direct", given=given["accuracy"], **scored)


def with_best_answer(scores: dict, mode: str) -> dict:
    """`scores` (per held-out set) with `accuracy_best`, overall and per question: the greedy answer in `mode`."""
    key = "accuracy_think" if mode == "think" else "accuracy_nothink"
    return {name: {**s, "accuracy_best": s[key], "per_question": {**s["per_question"], "accuracy_best": s["per_question"][key]}}
            for name, s in scores.items()}


def greedy_accuracy_of(model, tokenizer, eval_sets: list[EvalSet], budget: Budget) -> dict:
    """Greedy accuracy with thinking per held-out set: the points of the accuracy curves."""
    from rlpt.models import ensure_think_tokens

    think = ensure_think_tokens(model, tokenizer)
    return {e.name: exact_match_accuracy(model, tokenizer, think, e.tasks(), use_thought=True,
                                         max_thought_tokens=budget.thought_tokens)["accuracy"] for e in eval_sets}


def greedy_accuracy(folder: Path, eval_sets: list[EvalSet], budget: Budget) -> dict:
    model, tokenizer, _ = load_model_and_tokenizer(str(folder))
    return greedy_accuracy_of(model, tokenizer, eval_sets, budget)


def curve(run_dir: Path, base_scores: dict, final_scores: dict, eval_sets, budget: Budget) -> list[dict]:
    """Greedy accuracy with thinking at step 0 (Base) and at each checkpoint of an RL run; the last checkpoint is the
    exported model, already scored in full."""
    last = checkpoint.latest(run_dir)
    points = [dict(step=0, **{name: scores["accuracy_think"] for name, scores in base_scores.items()})]
    for folder in sorted((run_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1])):
        accuracy = ({name: scores["accuracy_think"] for name, scores in final_scores.items()} if folder == last
                    else greedy_accuracy(folder, eval_sets, budget))
        points.append(dict(step=int(folder.name.split("-")[1]), **accuracy))
    return points
