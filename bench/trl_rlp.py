"""RLP written the way a user would write it today on Hugging Face TRL's GRPOTrainer: the baseline of bench/vs_trl.py.

    pip install -e '.[bench]'
    python bench/trl_rlp.py --model-dir DIR [--contexts 8 --group-size 4 --thought-tokens 32 --context-tokens 128]

It times optimizer steps of RLP done with TRL on the model in DIR (`bench/vs_trl.py` makes one: a random Llama with
rlpt's character tokenizer) and prints one line `RESULT_JSON {...}` (median s/step after the first step, thought
tokens/s). How RLP maps onto GRPOTrainer:
- prompt: a context x_<t of `--context-tokens` characters followed by `<think>`; x_t rides along in a dataset column,
  which TRL hands to the reward function (repeated G times);
- thought: TRL's completion at temperature 0.7 (no top-p/top-k), at least 1 and at most L tokens, ended by
  `</think>` (a stop id; a sampled one belongs to the completion and gets gradient);
- reward: G/(G-1) * (S_pred - S_ema), from the trainer's own model after `x_<t <think> c </think>` (the tag forced
  when the thought was cut) and from an EMA copy after x_<t, untempered, without gradient. TRL's group baseline with
  `scale_rewards="none"` subtracts the group mean, so the advantage is RLP's G/(G-1)(r_i - mean_j r_j);
- loss: `loss_type="grpo"`, the per-token clipped surrogate averaged per thought then over thoughts, eps 0.2, no KL
  (`beta=0`), one update per batch;
- EMA teacher: float32, decay 0.999, set from the model before the first batch and moved after every optimizer step
  (a TrainerCallback's `on_step_end`).
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import tempfile
import time

import torch

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 "  # characters that rlpt's character tokenizer round-trips alone


def logprob_after(model, sequences: list[list[int]], targets: list[int], pad_id: int) -> torch.Tensor:
    """log p(target | sequence) per row, untempered: the logits at each row's last token (rows right-padded)."""
    width = max(len(s) for s in sequences)
    ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in sequences])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
    logits = model(input_ids=ids, attention_mask=mask).logits[torch.arange(len(sequences)), mask.sum(1) - 1].float()
    return torch.log_softmax(logits, -1)[torch.arange(len(sequences)), torch.tensor(targets)]


def make_dataset(tokenizer, contexts: int, context_tokens: int, seed: int):
    """`contexts` prompts: random text of `context_tokens` characters and `<think>`; x_t is the next character."""
    from datasets import Dataset

    rng = random.Random(seed)
    rows = []
    for _ in range(contexts):
        text = "".join(rng.choice(ALPHABET) for _ in range(context_tokens + 1))
        rows.append({"prompt": text[:-1] + "<think>", "context_ids": tokenizer(text[:-1])["input_ids"],
                     "next_token_id": tokenizer.convert_tokens_to_ids(text[-1])})
    return Dataset.from_list(rows)


def build_trainer(args, step_seconds: list[float], thought_tokens: list[int]):
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    open_id, close_id = tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, close_id]  # TRL stops at the model's eos ids
    teacher = copy.deepcopy(model).float().eval().requires_grad_(False)  # phi_0 = theta_0
    policy = {}  # the trainer's model, once the trainer exists
    scale = args.group_size / (args.group_size - 1)

    def information_gain(prompts, completions, completion_ids, context_ids, next_token_id, **kwargs):
        """Rewards of the B*G thoughts; `context_ids` is `<bos> x_<t`, the prompt TRL sampled from less `<think>`."""
        with torch.no_grad():
            thoughts = [[t for t in c if t not in (close_id, tokenizer.eos_token_id)] for c in completion_ids]
            thought_tokens.append(sum(len(c) for c in completion_ids))
            closed = [list(c) + [open_id] + t + [close_id] for c, t in zip(context_ids, thoughts)]
            s_pred = logprob_after(policy["model"], closed, next_token_id, tokenizer.pad_token_id)
            # S_ema once per context (TRL repeats each context G times)
            first = {tuple(c): i for i, c in reversed(list(enumerate(context_ids)))}
            contexts = list(first)
            s_ema = logprob_after(teacher, [list(c) for c in contexts], [next_token_id[first[c]] for c in contexts],
                                  tokenizer.pad_token_id)[torch.tensor([contexts.index(tuple(c)) for c in context_ids])]
        return (scale * (s_pred - s_ema)).tolist()

    class EmaAndClock(TrainerCallback):
        def on_step_begin(self, args_, state, control, **kwargs):
            self.began = time.perf_counter()

        def on_step_end(self, args_, state, control, **kwargs):
            with torch.no_grad():  # phi <- tau phi + (1 - tau) theta, after the optimizer step
                for phi, theta in zip(teacher.parameters(), policy["model"].parameters()):
                    phi.lerp_(theta.detach().float(), 1 - args.ema_decay)
            step_seconds.append(time.perf_counter() - self.began)

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="rlpt-trl-"), per_device_train_batch_size=args.contexts * args.group_size,
        gradient_accumulation_steps=1, num_generations=args.group_size, max_completion_length=args.thought_tokens,
        temperature=0.7, top_p=1.0, top_k=0, generation_kwargs={"min_new_tokens": 1}, beta=0.0, epsilon=0.2,
        num_iterations=1, loss_type="grpo", scale_rewards="none", learning_rate=1e-6, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, max_steps=args.steps, shuffle_dataset=False, bf16=False,
        gradient_checkpointing=False, logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, seed=args.seed, use_cpu=True,
    )
    dataset = make_dataset(tokenizer, args.contexts * args.steps, args.context_tokens, args.seed)
    trainer = GRPOTrainer(model=model, reward_funcs=information_gain, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[EmaAndClock()])
    policy["model"] = trainer.model
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--contexts", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--thought-tokens", type=int, default=32)
    parser.add_argument("--context-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    step_seconds, thought_tokens = [], []
    build_trainer(args, step_seconds, thought_tokens).train()
    timed = step_seconds[1:] or step_seconds  # the first step pays for warm-up
    seconds = statistics.median(timed)
    tokens = statistics.median(thought_tokens[1:] or thought_tokens)
    print("RESULT_JSON " + json.dumps(dict(s_per_step=seconds, thought_tokens_per_step=tokens,
                                           thought_tokens_per_s=tokens / seconds, steps=len(step_seconds))))


if __name__ == "__main__":
    main()
