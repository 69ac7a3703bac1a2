"""Evaluation: exact-match accuracy on question/answer pairs (with or without a thought first), and the intrinsic
metric on documents (log-likelihood of the next token with and without thinking, next-token accuracy)."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from rlpt import arith
from rlpt.data import after_marker, make_contexts
from rlpt.documents import Document, first_position_after, jsonl_records, windows
from rlpt.errors import UserError
from rlpt.generation import Chooser, decode, greedy
from rlpt.models import ThinkTokens
from rlpt.rollout.reference import continuation_logprobs
from rlpt.suites import SUITES, thought_matches

MAX_ANSWER_TOKENS = 24


def normalise_answer(text: str) -> str:
    """The answer is what follows the thought up to the end of its line, without spaces or a closing period."""
    return text.split("\n", 1)[0].strip().rstrip(".").strip()


@torch.no_grad()
def answer_questions(
    model, tokenizer, think: ThinkTokens, questions: list[str], *, use_thought: bool, max_thought_tokens: int,
    batch_size: int = 256, choose_thought: Chooser = greedy,
) -> list[dict]:
    """Greedy answers. With `use_thought`: question, `<think>`, a thought (greedy, or drawn by `choose_thought`;
    closed by force at the limit), `</think>`, then the answer. Returns one dict per question: thought and answer."""
    results = []
    bar = tqdm(total=len(questions), desc="evaluating", unit="question", leave=False, dynamic_ncols=True, mininterval=1.0)
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        prompts = [tokenizer(q)["input_ids"] for q in chunk]
        thoughts = [[] for _ in chunk]
        if use_thought:
            prompts = [p + [think.open_id] for p in prompts]
            thoughts = decode(
                model, prompts, max_new_tokens=max_thought_tokens, stop_ids=[think.close_id], choose=choose_thought,
                pad_id=tokenizer.pad_token_id,
            )
            thoughts = [t if t and t[-1] == think.close_id else t + [think.close_id] for t in thoughts]
            prompts = [p + t for p, t in zip(prompts, thoughts)]
        answers = decode(  # the answer itself may not open (another) thought
            model, prompts, max_new_tokens=MAX_ANSWER_TOKENS, stop_ids=[tokenizer.eos_token_id], choose=greedy,
            pad_id=tokenizer.pad_token_id, banned_ids=[think.open_id, think.close_id],
        )
        for thought, answer in zip(thoughts, answers):
            text = tokenizer.decode(answer, skip_special_tokens=True)
            results.append(dict(thought=tokenizer.decode(thought[:-1]) if thought else "", answer=normalise_answer(text)))
        bar.update(len(chunk))
    bar.close()
    return results


def exact_match_accuracy(model, tokenizer, think: ThinkTokens, tasks: list[dict], *, use_thought: bool,
                         max_thought_tokens: int, choose_thought: Chooser = greedy) -> dict:
    outputs = answer_questions(
        model, tokenizer, think, [t["question"] for t in tasks], use_thought=use_thought,
        max_thought_tokens=max_thought_tokens, choose_thought=choose_thought,
    )
    correct = [t["score"](o["answer"]) if "score" in t else o["answer"] == normalise_answer(str(t["answer"]))
               for o, t in zip(outputs, tasks)]  # a task may bring its own checker (reasoning-gym's)
    result = dict(accuracy=sum(correct) / max(1, len(correct)), n=len(correct), outputs=outputs, correct=correct)
    if use_thought and tasks and all("thought" in t for t in tasks):  # the built-in sets know the worked thought
        result["thought_correct"] = sum(thought_matches(o["thought"], t["thought"]) for o, t in zip(outputs, tasks)) / len(tasks)
    return result


@torch.no_grad()
def intrinsic(model, tokenizer, think, contexts, *, max_thought_tokens: int, batch_size: int = 256) -> dict:
    """Over `contexts` (rlpt.rollout.Context): the mean log-likelihood of what each one scores (x_t, and the tokens
    after it for a reward of K tokens, teacher-forced) without a thought and after a greedy thought, each context's
    difference (`gains`: the information gain of thinking) and the 95% interval half-width of their mean, and the
    accuracy of both at predicting x_t."""
    pad = tokenizer.pad_token_id
    nothink, withthink, hit_nothink, hit_think = [], [], [], []
    for start in range(0, len(contexts), batch_size):
        chunk = contexts[start : start + batch_size]
        targets = torch.tensor([c.target for c in chunk])
        scored = [c.scored for c in chunk]
        plain, plain_next, _ = continuation_logprobs(model, [list(c.prefix) for c in chunk], scored, pad)
        prompts = [list(c.prefix) + [think.open_id] for c in chunk]
        thoughts = decode(model, prompts, max_new_tokens=max_thought_tokens, stop_ids=[think.close_id], choose=greedy,
                          pad_id=pad, banned_first_ids=[think.close_id])
        closed = [p + t + ([] if t[-1] == think.close_id else [think.close_id]) for p, t in zip(prompts, thoughts)]
        thought, thought_next, _ = continuation_logprobs(model, closed, scored, pad)
        nothink += plain.cpu().tolist()
        withthink += thought.cpu().tolist()
        hit_nothink += (plain_next.cpu().argmax(-1) == targets).tolist()
        hit_think += (thought_next.cpu().argmax(-1) == targets).tolist()
    n = max(1, len(contexts))
    gains = [w - p for w, p in zip(withthink, nothink)]
    return dict(
        positions=len(contexts), scored_tokens=max((len(c.scored) for c in contexts), default=0),
        logp_nothink=sum(nothink) / n, logp_think=sum(withthink) / n, gain_ci95=mean_interval(gains),
        next_token_acc=sum(hit_nothink) / n, next_token_acc_think=sum(hit_think) / n, gains=gains,
    )


def mean_interval(values: list[float]) -> float | None:
    """Half-width of the 95% interval of the mean of `values` (normal approximation; None for fewer than 2)."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    return 1.96 * (sum((v - mean) ** 2 for v in values) / (n - 1) / n) ** 0.5


def document_contexts(tokenizer, texts: list[str], rule: str, limit: int, reward_tokens: int = 1) -> list:
    """The first `limit` (document, position) contexts of `texts` under a position rule (seeded, step 0), each
    scoring `reward_tokens` tokens from x_t on."""
    marker = after_marker(rule)
    docs = []
    for text in texts:
        first = 1 if marker is None else first_position_after(tokenizer, text, marker)
        ids = tokenizer(text)["input_ids"]
        if first is not None and len(ids) >= 2:
            docs.append(Document(ids, "eval", first))
    return make_contexts(docs, rule, seed=0, step=0, reward_tokens=reward_tokens)[:limit]


def answer_records(spec: str, questions: list[dict]) -> list[tuple[str, int]]:
    """(text, answer_at) of each question/answer pair of an evaluation set, as `rlp.positions=answer` trains on one:
    the question followed by its answer, which starts at character `answer_at`. A JSONL file's pair as the training
    corpus reads the record (question + answer); a built-in set's problem as its document writes it (question,
    answer, period: the RLVR records of `rlpt experiment --post`); a reasoning-gym prompt (`...Answer:`), a space,
    then the answer."""
    tail = "{}." if spec.startswith("builtin:") else " {}" if spec.startswith("reasoning_gym:") else "{}"
    return [(q["question"] + tail.format(q["answer"]), len(q["question"])) for q in questions]


def answer_contexts(tokenizer, spec: str, records: list[tuple[str, int]], limit: int, reward_tokens: int = 1) -> list:
    """The first `limit` contexts of `answer_records`: one per record, at the first token of its answer (where
    `rlp.positions=answer` puts the thought), each scoring `reward_tokens` tokens from there on."""
    docs = []
    for number, (text, answer_at) in enumerate(records, start=1):
        docs += windows(text, f"{spec} (question {number})", tokenizer, 1 << 30, None, answer_at)  # one window
    return make_contexts(docs, "answer", seed=0, step=0, reward_tokens=reward_tokens)[:limit]


def check_eval_set(spec: str, key: str = "--tasks") -> None:
    """What `load_eval_set` would refuse, found before any model is built: an unknown name, a missing file, a
    malformed or unrecognised line (the file is read)."""
    name = spec.removeprefix("builtin:")
    if spec.startswith("builtin:") and name != "arith" and name not in SUITES:
        raise UserError(f"{key}: unknown built-in set {spec!r} (known: builtin:arith, "
                        + ", ".join(f"builtin:{s}" for s in SUITES) + ")")
    if not spec.startswith(("builtin:", "reasoning_gym:")):
        read_eval_file(eval_file(spec, key))


def eval_file(spec: str, key: str = "--tasks") -> Path:
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"{key}: {spec} is not a file")
    return path


def read_eval_file(path: Path) -> tuple[list[dict], list[str]]:
    """(questions, documents) of a JSONL file: lines {"question": ..., "answer": ...} are questions (a "thought"
    field is kept, to count right thoughts), lines {"text": ...} documents; any other line is an error naming it."""
    questions, documents = [], []
    for number, record in jsonl_records(path):
        if isinstance(record, dict) and "question" in record and "answer" in record:
            questions.append({"question": str(record["question"]), "answer": str(record["answer"]),
                              **({"thought": str(record["thought"])} if "thought" in record else {})})
        elif isinstance(record, dict) and isinstance(record.get("text"), str):
            documents.append(record["text"])
        else:
            raise UserError(f"{path}:{number}: expected {{'question': ..., 'answer': ...}} or {{'text': ...}}")
    return questions, documents


def load_eval_set(spec: str, limit: int | None = None, corpus: str | None = None) -> tuple[list[dict], list[str]]:
    """(questions, documents) of an evaluation set. `builtin:arith`: the held-out questions, and the same problems
    as documents. `reasoning_gym:NAME?size=N&seed=S`: generated problems, scored by the generator's checker, without
    those whose question occurs in `corpus` (the training corpus, when it is a reasoning_gym one). A JSONL
    file: see `read_eval_file`."""
    name = spec.removeprefix("builtin:")
    if spec.startswith("reasoning_gym:"):
        from rlpt import rgym

        # the same problems as questions and as documents
        return rgym.questions(spec, limit, corpus), [rgym.document(entry) for entry in rgym.heldout(spec, limit, corpus)]
    if spec.startswith("builtin:") and name == "arith":
        questions = arith.heldout_questions(limit or 256)
        return questions, [q["question"] + q["answer"] + "." for q in questions]
    if spec.startswith("builtin:") and name in SUITES:
        problems = SUITES[name].heldout_problems(limit or 256)
        return [p.task() for p in problems], [p.plain() for p in problems]
    questions, documents = read_eval_file(eval_file(spec))
    return questions[:limit] if limit else questions, documents[:limit] if limit else documents
