"""What `limachat train` runs (limachat/commands/train.py parses its options): gather the sources, split the
variants, fingerprint each, and train those whose fingerprint changed (or print the plan)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from limachat.layout import training_record


def gather(settings, data: tuple[Path, ...], fmt: str | None, use_bundled: bool, from_db: bool, filters: dict):
    from limachat.train.data import bundled_examples, from_chains, read_file, split

    examples = []
    for path in data:
        examples += read_file(path, fmt)
    if from_db:
        from limachat.dialogues.export import Filters, chains
        from limachat.dialogues.store import Store

        store = Store(settings.db_path)
        try:
            examples += from_chains(chains(store, Filters(**filters)))
        finally:
            store.close()
    if use_bundled or not (data or from_db):
        examples += bundled_examples()
    return split(examples)


def fingerprint(config, examples, base_model: str) -> str:
    """Content, not spelling: the data's hash, the resolved config and the base's identity."""
    from limachat.serve.base import base_identity

    return fingerprint_of(config, examples, base_identity(base_model))


def fingerprint_of(config, examples, identity: str) -> str:
    from limachat.train.data import data_hash

    # A setting added later at its default (max_steps None) leaves earlier fingerprints as they were.
    settings = config.model_dump(exclude={"variant"} | ({"max_steps"} if config.max_steps is None else set()))
    parts = [data_hash(examples), settings, identity]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def is_current(out_dir: Path, stamp: str) -> bool:
    return (training_record(out_dir) or {}).get("fingerprint") == stamp


def run(
    settings,
    variants: list[str],
    split_,
    base_model: str,
    overrides: dict,
    *,
    dry_run: bool = False,
    epoch: int | None = None,
    progress=print,
    force: bool = False,
    name: str | None = None,
) -> None:
    from limachat.train.recipe import make_config

    for variant in variants:
        config = make_config(variant=variant, **overrides)
        examples = split_.variant(variant)
        out_dir = settings.layout.checkpoint(name or variant)
        stamp = fingerprint(config, examples, base_model)
        if dry_run:
            _dry_run(config, examples, base_model, progress)
            continue
        if not force and is_current(out_dir, stamp):
            from limachat.train.trainer import select_epoch

            if epoch is not None:
                select_epoch(out_dir, epoch)
                progress(f"{variant}: up to date in {out_dir}; now serving epoch {epoch}")
            else:
                progress(f"{variant}: up to date in {out_dir} (same data, settings and base); not retrained")
            continue
        from limachat.train import shipped

        if not force and epoch is None and shipped.install(variant, stamp, out_dir, base_model):
            progress(
                f"{variant}: the adapter shipped in {shipped.shipped(variant)} (same data, settings and base); not trained"
            )
            continue
        from limachat.train.trainer import main

        record = main(config, examples, base_model, out_dir, progress, serve_epoch=epoch, fingerprint=stamp)
        if record is None:  # a data-parallel run's other processes: rank 0 saved it
            continue
        progress(
            f"{variant}: trained in {record['seconds']:.0f} s ({record['tokens_per_second']:.0f} tokens/s), "
            f"final loss {record['losses'][-1][1] if record['losses'] else 'n/a'}; saved {out_dir}"
        )


def _dry_run(config, examples, base_model: str, progress) -> None:
    """Print the plan and an estimate from one timed forward and backward pass (no weights change)."""
    from transformers import AutoTokenizer

    from limachat.train.trainer import ensure_chat_template, load_model, prepare, time_forward_backward

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    added = ensure_chat_template(tokenizer)
    plan, rows = prepare(config, examples, tokenizer)
    progress(plan.line() + f", {config.epochs} epochs ({config.recipe} recipe, {config.method})")
    if not rows:
        return
    model, _ = load_model(base_model, config, tokenizer, added)
    batch = sorted(rows, key=lambda r: len(r["input_ids"]))[len(rows) // 2 :][: config.micro_batch_size]
    [seconds] = time_forward_backward(model, batch, tokenizer.pad_token_id or 0)
    rate = sum(len(r["input_ids"]) for r in batch) / seconds
    progress(
        f"  estimate: {plan.tokens * config.epochs / rate / 60:.1f} min at {rate:.0f} tokens/s (one timed micro-batch)"
    )
