"""`limachat study create|status|report`: LIMA's section 6 as a named study (dialogues/study.py)."""

from __future__ import annotations

from pathlib import Path

import click

from limachat import context


def _store(ctx: click.Context):
    return context.store(context.settings(ctx))


def _names(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


@click.group("study")
def study_cmd() -> None:
    """A named study: prompts, checkpoints, conversations per checkpoint, turns, blind, annotators."""


@study_cmd.command("create")
@click.argument("name")
@click.option(
    "--checkpoints",
    required=True,
    help="Two or more, comma-separated, in the order the report lists them (LIMA: zero-shot,dialogue).",
)
@click.option(
    "--prompts",
    "prompts",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='A prompt set (.jsonl with "prompt", or .txt, one a line); default: the bundled set.',
)
@click.option(
    "--conversations", type=int, default=10, show_default=True, help="Conversations per checkpoint (LIMA: 10)."
)
@click.option("--turns", type=int, default=3, show_default=True, help="Exchanges each conversation should reach.")
@click.option(
    "--blind/--not-blind", default=True, show_default=True, help="Show the sides as A and B until a session is closed."
)
@click.option("--annotators", help="Comma-separated names who take part (default: anyone).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds every annotator's order and sides.")
@click.pass_context
def create_cmd(
    ctx: click.Context,
    name: str,
    checkpoints: str,
    prompts: Path | None,
    conversations: int,
    turns: int,
    blind: bool,
    annotators: str | None,
    seed: int,
) -> None:
    """Define a study. The app's Compare tab then walks each annotator through it (key n: next prompt)."""
    from limachat.dialogues import study

    known = [c.name for c in context.settings(ctx).resolved_checkpoints()]
    try:
        st = study.create(
            _store(ctx),
            name,
            _names(checkpoints),
            prompts=prompts,
            conversations=conversations,
            turns=turns,
            blind=blind,
            annotators=_names(annotators),
            seed=seed,
            known=known,
        )
    except ValueError as e:
        raise click.ClickException(f"{e} (see `limachat study create --help`)") from None
    slots = len(study.plan(st, ""))
    click.echo(
        f"study {st['name']}: {', '.join(st['checkpoints'])}; {slots} compare conversations per annotator, "
        f"{st['turns']} turns each, from {len(st['prompts'])} prompts ({st['prompt_set']}); "
        f"{'blind' if st['blind'] else 'not blind'}"
    )


@study_cmd.command("status")
@click.argument("name")
@click.pass_context
def status_cmd(ctx: click.Context, name: str) -> None:
    """The progress board: per annotator and checkpoint, conversations done, replies rated, what is left."""
    from limachat.dialogues import study

    store = _store(ctx)
    st = store.study(name)
    rows = study.progress(store, st)
    if not rows:
        click.echo(f"study {name}: nobody has started yet (it lists no annotators)")
        return
    header = list(rows[0])
    click.echo("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        click.echo("| " + " | ".join(str(r[h]) for h in header) + " |")


def write_report(
    store, name: str, *, html: Path | None = None, png: Path | None = None, csv_path: Path | None = None
) -> str:
    """The study report as Markdown (returned), and the files asked for."""
    from limachat.dialogues import study_report as srep

    reports = srep.document(store, name)
    srep.write(reports, html_path=html, png=png, csv_path=csv_path)
    return srep.markdown(reports)


@study_cmd.command("report")
@click.argument("name")
@click.option(
    "--html", type=click.Path(dir_okay=False, path_type=Path), help="One self-contained page (charts embedded)."
)
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), help="The chart.")
@click.option(
    "--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), help="Label counts, shares and intervals."
)
@click.pass_context
def report_cmd(ctx: click.Context, name: str, html: Path | None, png: Path | None, csv_path: Path | None) -> None:
    """The study's report (the same as `limachat report --study NAME`)."""
    ctx.invoke(ctx.find_root().command.commands["report"], study=name, html=html, png=png, csv_path=csv_path)
