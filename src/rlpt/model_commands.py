"""`rlpt eval` and `rlpt sample`: what a model's thoughts do, on a question set or held-out documents (eval) and at one
position (sample), scored where and as its run trained when the model is a run's."""

from __future__ import annotations

import json
from pathlib import Path

from rlpt.errors import UserError


def cmd_eval(args) -> int:
    from rlpt import checkpoint, evaluate
    from rlpt.models import check_model_source, load_model_and_tokenizer

    if args.reward_tokens is not None and args.reward_tokens < 1:
        raise UserError("--reward-tokens must be >= 1")
    check_model_source(checkpoint.source(args.model), "--model")
    questions, documents = evaluate.load_eval_set(args.tasks, args.max_questions)  # read before a model is built
    rule, tokens, origin = document_scoring(args, checkpoint.run_config(args.model))
    records = answer_records(args, rule, questions, documents)  # what `answer` scores, or why it cannot
    model, tokenizer, think = load_model_and_tokenizer(checkpoint.source(args.model))
    result = {"model": args.model, "tasks": args.tasks, "think": args.think}
    if questions:
        qa = evaluate.exact_match_accuracy(model, tokenizer, think, questions, use_thought=args.think,
                                           max_thought_tokens=args.max_thought_tokens)
        result.update(accuracy=qa["accuracy"], n=qa["n"], **({"thought_correct": qa["thought_correct"]} if "thought_correct" in qa else {}))
        result["examples"] = [
            dict(question=q["question"], answer=q["answer"], thought=o["thought"], predicted=o["answer"], correct=c)
            for q, o, c in list(zip(questions, qa["outputs"], qa["correct"]))[:5]
        ]
    if records or (documents and rule != "answer"):
        contexts = (evaluate.answer_contexts(tokenizer, args.tasks, records, args.max_positions, tokens) if records
                    else evaluate.document_contexts(tokenizer, documents, rule, args.max_positions, tokens))
        if not contexts:
            raise UserError(f"--tasks {args.tasks}: no usable position under rule {rule!r}")
        metric = evaluate.intrinsic(model, tokenizer, think, contexts, max_thought_tokens=args.max_thought_tokens)
        metric.pop("gains")  # per position: the means and their interval are the result
        result.update(metric, position_rule=rule, reward_tokens=tokens, scoring_from=origin)
        if not questions:
            result.update(accuracy=result["next_token_acc_think" if args.think else "next_token_acc"], n=result["positions"])
    text = json.dumps(result, indent=1)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text if args.json else eval_summary(result, bool(questions)))
    return 0


def builtin_rule(tasks: str) -> str:
    """`first:MARKER` of a built-in set: the text its answers follow."""
    from rlpt.suites import SUITES

    suite = SUITES.get(tasks.removeprefix("builtin:"))
    return f"first:{suite.marker if suite else '='}"


def document_scoring(args, run) -> tuple[str, int, str]:
    """Where and what the intrinsic metric scores: the position rule, the tokens scored from x_t on, and where they
    come from. By default what the model's run trained on: its rlp.reward_tokens, and its rlp.positions where the rule
    reads the text (all, every:, after:, first:, answer: the answer of each question/answer pair, `answer_records`)
    or the set is the run's own (its data.path or eval.tasks: a list or random rule names places in the run's
    documents only). Otherwise the answer of a built-in set's documents, or every position of one's own documents,
    one token each. --positions and --reward-tokens override."""
    from rlpt.suites import ANSWER_TOKENS  # a built-in set's documents are scored on their whole answer

    own_set = run is not None and args.tasks in (run.data.path, run.eval.tasks)
    if run is not None and (own_set or not run.rlp.positions.startswith(("list:", "random:"))):
        rule, where = run.rlp.positions, "the run's rlp.positions"
    elif args.tasks.startswith("builtin:"):
        rule, where = builtin_rule(args.tasks), "the built-in set's answers"
    else:
        rule, where = "all", "every position"
    tokens, what = (run.rlp.reward_tokens, "the run's rlp.reward_tokens") if run is not None else (
        (ANSWER_TOKENS, "the built-in set's answers") if args.tasks.startswith("builtin:") else (1, "the next token"))
    if args.positions:
        rule, where = args.positions, "--positions"
    if args.reward_tokens:
        tokens, what = args.reward_tokens, "--reward-tokens"
    return rule, tokens, where if where == what else f"{where}; {what}"


def answer_records(args, rule: str, questions: list[dict], documents: list[str]) -> list[tuple[str, int]]:
    """Under the `answer` rule (a run of `rlp.positions=answer`, or --positions answer): the set's question/answer
    pairs as that rule trains on them (`evaluate.answer_records`), scored at each answer's first token. A `{"text":
    ...}` document of a JSONL file has no answer to put the thought before: an error, before a model is built, that
    names --positions (no other rule finds the place the run trained at in plain text). [] under any other rule."""
    from rlpt import evaluate

    if rule != "answer":
        return []
    where = "--positions answer" if args.positions else "the run's rlp.positions=answer (where it trained)"
    own_documents = documents and not args.tasks.startswith(("builtin:", "reasoning_gym:"))  # a set's are its problems
    if own_documents or not questions:
        raise UserError(f'--tasks {args.tasks}: {len(documents)} {{"text": ...}} document(s), and {where} scores the '
                        "first token of the answer of each question/answer record, one thought before each answer: a "
                        'document has no answer to score there. Evaluate a file of {"question": ..., "answer": ...} '
                        "records, or score the documents elsewhere with --positions RULE (e.g. --positions all)")
    return evaluate.answer_records(args.tasks, questions)


def describe_positions(rule: str) -> str:
    kind, _, text = rule.partition(":")
    return {"all": "every position", "first": f"the first token after {text!r}", "answer": "the first token of each "
            "question's answer", "after": f"every token after {text!r}"}.get(kind, f"positions {rule}")


def eval_summary(result: dict, has_questions: bool) -> str:
    """`rlpt eval` in a few plain lines (the JSON with --json or --output)."""
    way = "with a greedy thought" if result["think"] else "without a thought"
    lines = [f"rlpt eval: {result['model']} on {result['tasks']}"]
    if has_questions:
        lines.append(f"  exact-match accuracy {way}: {100 * result['accuracy']:.1f}% of {result['n']} questions")
        if "thought_correct" in result:
            lines.append(f"  greedy thought exactly the worked one: {100 * result['thought_correct']:.1f}%")
        for example in result["examples"][:3]:
            mark = "right" if example["correct"] else "wrong"
            thought = f" <think>{example['thought']}</think>" if result["think"] else ""
            lines.append(f"    {example['question']}{thought} {example['predicted']}  ({mark}; answer {example['answer']})")
    if "logp_think" in result:
        gain, half = result["logp_think"] - result["logp_nothink"], result["gain_ci95"]
        if half is None:
            interval, reading = "", "one position: no interval"
        else:
            interval = f", 95% interval +-{half:.3f}"
            reading = ("a thought helps predict it" if gain > half else "a thought makes it less likely" if gain < -half
                       else "no clear difference")
        tokens = result["reward_tokens"]
        what = "the next token" if tokens == 1 else f"the next {tokens} tokens (fewer at a document's end)"
        lines.append(f"  {what} at {result['positions']} positions, {describe_positions(result['position_rule'])} "
                     f"({result['scoring_from']}): mean log-likelihood {result['logp_think']:.3f} nats after a "
                     f"greedy thought, {result['logp_nothink']:.3f} without ({gain:+.3f}{interval}: {reading})")
        lines.append(f"  next-token accuracy: {100 * result['next_token_acc_think']:.1f}% after a thought, "
                     f"{100 * result['next_token_acc']:.1f}% without")
    return "\n".join(lines)


def cmd_sample(args) -> int:
    from rlpt import checkpoint
    from rlpt.generation import temperature_sampler
    from rlpt.models import check_model_source, load_model_and_tokenizer, load_teacher
    from rlpt.objective import group_advantages, information_gain
    from rlpt.rollout import Context, RolloutSpec
    from rlpt.rollout.reference import ReferenceEngine

    if args.reward_tokens is not None and args.reward_tokens < 1:
        raise UserError("--reward-tokens must be >= 1")
    run = checkpoint.run_config(args.model)  # score as the run did: its reward's tokens, discount and baseline
    tokens = args.reward_tokens or (run.rlp.reward_tokens if run else 1)
    temperature = args.temperature if args.temperature is not None else (run.rlp.temperature if run else 0.7)
    folder = checkpoint.source(args.model)
    check_model_source(folder, "--model")
    model, tokenizer, think = load_model_and_tokenizer(folder)
    teacher, teacher_name = model, "the model itself (the folder has no EMA teacher)"
    saved = None if folder.startswith("builtin:") else load_teacher(Path(folder), model)
    if saved is not None:
        teacher, teacher_name = saved, "the checkpoint's EMA teacher"
    prefix = tokenizer(args.prefix)["input_ids"]
    full = tokenizer(args.prefix + args.next)["input_ids"]
    if full[: len(prefix)] != prefix or len(full) <= len(prefix):
        raise UserError("--next: the prefix and next text do not split at a token boundary; choose another split")
    scored = full[len(prefix) : len(prefix) + tokens]
    spec = RolloutSpec(group_size=args.num_thoughts, max_thought_tokens=args.max_thought_tokens,
                       temperature=temperature, think=think, pad_id=tokenizer.pad_token_id,
                       baseline_excludes_think=run.rlp.baseline_excludes_think if run else False,
                       reward_discount=run.rlp.reward_discount if run else 1.0)
    context = Context(doc=0, position=len(prefix), prefix=tuple(prefix), target=scored[0], continuation=tuple(scored[1:]))
    rollouts = ReferenceEngine().rollout(model, teacher, [context], spec, temperature_sampler(temperature, args.seed))
    rewards = information_gain(rollouts.s_pred, rollouts.s_ema)
    advantages = group_advantages(rewards)[0]
    rows = [
        dict(thought=tokenizer.decode(t), thought_ids=t, s_pred=rollouts.s_pred[0, i].item(),
             s_ema=rollouts.s_ema[0].item(), reward=rewards[0, i].item(), advantage=advantages[i].item())
        for i, t in enumerate(rollouts.thoughts)
    ]
    scored_text = tokenizer.decode(scored)
    if args.json:
        print(json.dumps(dict(prefix=args.prefix, next_token=tokenizer.decode(scored[:1]), scored=scored_text,
                              reward_tokens=len(scored), temperature=temperature, teacher=teacher_name, thoughts=rows),
                         indent=1))
        return 0
    source = " (the run's rlp.reward_tokens)" if run and not args.reward_tokens else ""
    print(f"x_<t = {args.prefix!r}   scored: {scored_text!r}, {len(scored)} token{'s' if len(scored) > 1 else ''}"
          f"{source}   temperature {temperature:g}   teacher: {teacher_name}")
    print(f"S_ema = {rows[0]['s_ema']:+.3f}")
    for row in sorted(rows, key=lambda r: -r["reward"]):
        print(f"  reward {signed(row['reward'])}  advantage {signed(row['advantage'])}  S_pred {signed(row['s_pred'])}  "
              f"<think>{row['thought']}")
    if len({tuple(row["thought_ids"]) for row in rows}) == 1:
        print(f"  all {len(rows)} thoughts are the same: their advantages are 0, and RLP learns nothing at this position")
    return 0


def signed(value: float, decimals: int = 3) -> str:
    """`+1.234`; a value that rounds to zero prints `+0.000`, never `-0.000`."""
    text = f"{value:+.{decimals}f}"
    return "+" + text[1:] if float(text) == 0 else text
