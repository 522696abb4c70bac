"""`limachat train`: the options, the sources, a launch across processes, and DPO / KTO; the training itself
is limachat/train/pipeline.py (SFT variants) and limachat/train/preference.py."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import click

from limachat import context
from limachat.layout import DIALOGUE, VARIANTS
from limachat.options import filter_options
from limachat.train.pipeline import gather, run
from limachat.train.recipe import PRESETS


def launch(processes: int, argv: list[str]) -> None:
    """Run this same `limachat train` as `processes` data-parallel processes on this machine: torchrun's
    launcher (torch.distributed; transformers takes gloo on CPU, NCCL on GPUs), each process with its
    share of the cores. A process that fails has said why; this raises one line on top."""
    import logging
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # its own report of the failure
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // processes)))
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",  # torchrun --standalone: a free port on this machine
        max_restarts=0,
    )
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "limachat.cli", *argv)
    except ChildFailedError as e:
        codes = sorted({f.exitcode for f in e.failures.values()})
        raise click.ClickException(
            f"training in {processes} processes failed (exit code {', '.join(map(str, codes))}); see above"
        ) from None


def _preference(settings, method, data, base, name, start_from, overrides) -> None:
    from limachat.serve.base import BaseModelError, prepare_base
    from limachat.train import preference

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise click.ClickException(f"--name {name!r}: give a name of letters, digits, '.', '_', '-'")
    start = None
    if start_from != "base":
        start = settings.layout.checkpoint(start_from)
        if not (start / "adapter_config.json").is_file():
            raise click.ClickException(
                f"--start-from {start_from}: no trained adapter in {start}; train it first or give --start-from base"
            )
    try:
        rows = preference.load_rows(list(data), method)  # checked before the base is loaded
        base_model = prepare_base(settings.home, base or settings.server.base, lambda m: click.echo(m, err=True)).model
        record = preference.main(
            method,
            rows,
            base_model,
            settings.layout.checkpoint(name),
            start=start,
            overrides=overrides,
            progress=lambda m: click.echo(m, err=True),
        )
    except (BaseModelError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    final = record["losses"][-1][1] if record["losses"] else "n/a"
    click.echo(
        f"{name}: {method} trained in {record['seconds']:.0f} s, final loss {final}; saved "
        f"{settings.layout.checkpoint(name)} (`limachat serve` serves it as {name!r})"
    )


@click.command("train")
@click.option("--variant", type=click.Choice([*VARIANTS, "both"]), default="both", show_default=True)
@click.option(
    "--data",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    multiple=True,
    help="A training file (LIMA train.jsonl, messages or ShareGPT JSONL); repeatable.",
)
@click.option("--format", "fmt", type=click.Choice(["lima", "messages", "sharegpt"]), help="Format of --data files.")
@click.option("--bundled", is_flag=True, help="Add the bundled set (the default when no other source is given).")
@click.option("--from-db", is_flag=True, help="Add rated chains from the store, with the export filters below.")
@filter_options
@click.option(
    "--method",
    type=click.Choice(["lora", "full", "dpo", "kto"]),
    default="lora",
    show_default=True,
    help="lora, full: supervised (SFT); dpo, kto: a LoRA checkpoint from `limachat export --format preference|kto` "
    "files given as --data.",
)
@click.option("--beta", type=click.FloatRange(0, min_open=True), help="dpo, kto: the beta (TRL's default 0.1).")
@click.option(
    "--start-from",
    default=DIALOGUE,
    show_default=True,
    help="dpo, kto: the trained checkpoint to start from (its copy is the reference), or `base` for a fresh LoRA.",
)
@click.option(
    "--recipe", type=click.Choice(sorted(PRESETS)), help="lima (default for full) or lora-cpu (default for lora)."
)
@click.option("--epochs", type=click.IntRange(1))
@click.option("--learning-rate", type=float)
@click.option("--batch-size", type=click.IntRange(1))
@click.option("--micro-batch-size", type=click.IntRange(1))
@click.option("--max-length", type=click.IntRange(16))
@click.option("--epoch", type=click.IntRange(1), help="Serve this epoch's checkpoint (default: the last).")
@click.option("--base", help="Base model (HF id or folder) instead of the one `limachat base` prepared.")
@click.option("--name", help="Save as <home>/checkpoints/NAME instead of the variant's folder (one variant only).")
@click.option("--max-steps", type=click.IntRange(1), help="Stop after this many optimizer steps (a trial run).")
@click.option(
    "--processes",
    type=click.IntRange(1),
    help="Train data-parallel in this many processes (torchrun; each takes a share of every batch). Under "
    "`accelerate launch` or torchrun: their number.",
)
@click.option("--dry-run", is_flag=True, help="Print counts, tokens, steps and an estimated time; train nothing.")
@click.option("--force", is_flag=True, help="Train even when data, settings and base are unchanged.")
@click.pass_context
def train_cmd(
    ctx,
    variant,
    data,
    fmt,
    bundled,
    from_db,
    method,
    beta,
    start_from,
    recipe,
    epochs,
    learning_rate,
    batch_size,
    micro_batch_size,
    max_length,
    epoch,
    base,
    name,
    max_steps,
    processes,
    dry_run,
    force,
    **filters,
) -> None:
    """Train the zero-shot (single-turn only) and dialogue (plus multi-turn chains) checkpoints."""
    from limachat.dialogues.formats import FormatError
    from limachat.serve.base import BaseModelError, prepare_base

    settings = context.settings(ctx)
    rank, launched = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if processes is not None and launched > 1 and processes != launched:
        raise click.ClickException(f"--processes {processes}: this run was launched with {launched} processes")
    if method in ("dpo", "kto") and (processes or 1) > 1:
        raise click.ClickException(f"--processes goes with --method lora or full, not {method}")
    if method in ("dpo", "kto"):
        given = [
            flag
            for flag, value in (
                ("--from-db", from_db),
                ("--bundled", bundled),
                ("--format", fmt),
                ("--recipe", recipe),
                ("--epoch", epoch),
                ("--dry-run", dry_run),
                ("--micro-batch-size", micro_batch_size),
            )
            if value
        ]
        if given:
            raise click.ClickException(f"--method {method} trains on --data exports only; drop {given[0]}")
        if not data:
            raise click.ClickException(
                f"--method {method} needs --data FILE: a `limachat export --format "
                f"{'preference' if method == 'dpo' else 'kto'}` file"
            )
        return _preference(
            settings,
            method,
            data,
            base,
            name or method,
            start_from,
            dict(beta=beta, learning_rate=learning_rate, epochs=epochs, batch_size=batch_size, max_length=max_length),
        )
    if beta is not None or start_from != DIALOGUE:
        raise click.ClickException("--beta and --start-from go with --method dpo or kto")
    if name is not None and (variant == "both" or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name)):
        raise click.ClickException(f"--name {name!r}: give one --variant and a name of letters, digits, '.', '_', '-'")
    say = (lambda m: click.echo(m, err=True)) if rank == 0 else (lambda m: None)
    try:
        split_ = gather(settings, data, fmt, bundled, from_db, filters)
        base_model = prepare_base(settings.home, base or settings.server.base, say).model  # once, before any launch
        variants = list(VARIANTS) if variant == "both" else [variant]
        say(f"examples: {len(split_.single)} single-turn, {len(split_.chains)} multi-turn chains")
        overrides = dict(
            method=method,
            recipe=recipe,
            epochs=epochs,
            learning_rate=learning_rate,
            batch_size=batch_size,
            micro_batch_size=micro_batch_size,
            max_length=max_length,
            max_steps=max_steps,
        )
        if (processes or 1) > 1 and launched == 1 and not dry_run:
            from limachat.train.recipe import make_config
            from limachat.train.trainer import accumulation

            for v in variants:  # a batch the processes cannot share stops here, not in each process
                accumulation(make_config(variant=v, **overrides), processes)
            say(f"training in {processes} processes (torchrun, torch.distributed)")
            return launch(processes, sys.argv[1:])
        run(
            settings,
            variants,
            split_,
            base_model,
            overrides,
            dry_run=dry_run,
            epoch=epoch,
            progress=say,
            force=force,
            name=name,
        )
    except (FormatError, BaseModelError, ValueError) as e:
        raise click.ClickException(str(e)) from None
