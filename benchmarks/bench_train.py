"""Training throughput: TRL SFTTrainer steps against a raw PEFT forward+backward, same model,
adapter and batch, in one run. Tokens are the batch's real (unpadded) tokens."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from limachat.train.data import bundled_examples, tokenize
from limachat.train.recipe import make_config
from limachat.train.trainer import load_model, sft_args, time_forward_backward


def batch_rows(tokenizer, n: int = 4, max_length: int = 512):
    rows = [tokenize(ex, tokenizer, max_length) for ex in bundled_examples()]
    rows.sort(key=lambda r: len(r["input_ids"]))
    middle = rows[len(rows) // 2 - n // 2 :][:n]  # median-length examples: typical padding
    return [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in middle]


def trainer_steps(model, tokenizer, rows, steps: int) -> list[float]:
    """Seconds per optimizer step of SFTTrainer with limachat's settings on the same batch."""
    from datasets import Dataset
    from transformers import TrainerCallback

    from limachat.train.trainer import trainer_class

    config = make_config(micro_batch_size=len(rows), batch_size=len(rows), max_length=512, max_steps=steps + 1)
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

        def on_train_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as d:
        args = sft_args(config, Path(d))
        args.logging_steps = 10**6  # progress logging is the caller's; the clock needs none
        trainer = trainer_class()(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows * (steps + 1)),
            processing_class=tokenizer,
            callbacks=[Clock()],
        )
        trainer.train()
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return gaps[1:]


def throughput(base_model: str, steps: int = 5) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    rows = batch_rows(tokenizer)
    tokens = sum(len(r["input_ids"]) for r in rows)
    config = make_config()
    model, _ = load_model(base_model, config, tokenizer, False)
    raw = time_forward_backward(model, rows, tokenizer.pad_token_id or 0, steps)
    model, _ = load_model(base_model, config, tokenizer, False)
    sft = trainer_steps(model, tokenizer, rows, steps)
    raw_rate = [tokens / t for t in raw]
    sft_rate = [tokens / t for t in sft]
    return {
        "tokens_per_batch": tokens,
        "raw_tok_s": raw_rate,
        "trainer_tok_s": sft_rate,
        "ratio": statistics.median(sft_rate) / statistics.median(raw_rate),
    }


if __name__ == "__main__":
    import sys

    print(throughput(sys.argv[1], steps=int(sys.argv[2]) if len(sys.argv) > 2 else 3))
