"""`limachat study create|status|report`: LIMA's section 6 as a named study (dialogues/study.py); and
`limachat queue create|status`: replies put in a queue for more ratings or adjudication (dialogues/queues.py)."""

from __future__ import annotations

from pathlib import Path

import click

from limachat import context
from limachat.dialogues.study import HISTORIES, RULES
from limachat.dialogues.values import QUEUE_SOURCES
from limachat.options import filter_options


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
    help='A prompt set (.jsonl with "prompt" and optional scripted "turns" and "replies"; a FastChat question file '
    'such as MT-Bench\'s, its later turns scripted; or .txt, one a line), or a bundled one: "bundled" (10 opening '
    'prompts, the default) or "scripted" (12 three-turn conversations).',
)
@click.option(
    "--history",
    type=click.Choice(HISTORIES),
    default="own",
    show_default=True,
    help="own: each side continues from its own replies (LIMA); shared: both continue from one reply, by --rule; "
    "both: every conversation under each, in a random order per annotator.",
)
@click.option(
    "--rule",
    type=click.Choice(RULES),
    default="verdict",
    show_default=True,
    help="A shared history's reply: the one the exchange verdict preferred (A's on a tie), or the prompt set's "
    "reference reply.",
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
@click.option(
    "--raters-per-conversation",
    "raters",
    type=int,
    help="Split the conversations among --annotators, this many rating each: one drives it, the others "
    "rate it from the study's queue (default: everyone walks everything).",
)
@click.option("--adjudicators", help="Comma-separated names who may settle disagreements (`limachat queue`).")
@click.pass_context
def create_cmd(
    ctx: click.Context,
    name: str,
    checkpoints: str,
    prompts: str | None,
    history: str,
    rule: str,
    conversations: int,
    turns: int,
    blind: bool,
    annotators: str | None,
    seed: int,
    raters: int | None,
    adjudicators: str | None,
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
            raters_per_conversation=raters,
            adjudicators=_names(adjudicators),
            history=history,
            history_rule=rule,
        )
    except ValueError as e:
        raise click.ClickException(f"{e} (see `limachat study create --help`)") from None
    split = study.assignments(st)
    if split:
        who = ", ".join(f"{p} drives {sum(a.driver == p for a in split)}" for p in st["annotators"])
        said = (
            f"{len(split)} compare conversations shared out, {st['raters_per_conversation']} raters each ({who}; "
            f"the others rate from queue {study.study_queue(st['name'])})"
        )
    else:
        said = f"{len(study.plan(st, ''))} compare conversations per annotator"
    click.echo(
        f"study {st['name']}: {', '.join(st['checkpoints'])}; {said}, {st['turns']} turns each, from "
        f"{len(st['prompts'])} prompts ({st['prompt_set']}); {'blind' if st['blind'] else 'not blind'}; "
        + study.said(history, rule)
    )


@study_cmd.command("status")
@click.argument("name")
@click.pass_context
def status_cmd(ctx: click.Context, name: str) -> None:
    """The progress board (per annotator and checkpoint: conversations done, replies rated, what is left) and
    how many more conversations the study needs for its excellent-share gap to clear 0."""
    from limachat.dialogues import study, study_report

    store = _store(ctx)
    st = store.study(name)
    rows = study.progress(store, st)
    if not rows:
        click.echo(f"study {name}: nobody has started yet (it lists no annotators)")
    else:
        _table(rows)
    click.echo("")
    for needed in study_report.build(store, name).needed:
        click.echo(needed.line())


def _table(rows: list[dict]) -> None:
    header = list(rows[0])
    click.echo("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        click.echo("| " + " | ".join(str(r[h]) for h in header) + " |")


def write_report(
    store,
    name: str,
    *,
    html: Path | None = None,
    png: Path | None = None,
    csv_path: Path | None = None,
    raters: str | None = None,
) -> str:
    """The study report as Markdown (returned), and the files asked for."""
    from limachat.dialogues import study_report as srep

    reports = srep.document(store, name, raters)
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


@click.group("queue")
def queue_cmd() -> None:
    """Replies put in a named queue for more ratings, or for an adjudicator's final label; walked in the app's
    Queue tab, one reply at a time with the rating keys."""


@queue_cmd.command("create")
@click.argument("name")
@click.option(
    "--source",
    type=click.Choice(QUEUE_SOURCES),
    default="filter",
    show_default=True,
    help="study: a split study's shared conversations; filter: the replies of the chains the filters pick; "
    "disagree: replies people labelled differently; judge-disagrees: replies a judge labelled otherwise than "
    "the people; one-rater: replies only one person rated.",
)
@click.option(
    "--needs", type=int, help="Ratings each reply wants (default: the study's raters, else 2; 1 to adjudicate)."
)
@click.option(
    "--adjudicate",
    is_flag=True,
    help="A queue to settle: its adjudicators see everyone's labels and give the final one.",
)
@click.option("--adjudicators", help="Comma-separated names who may adjudicate (default: the study's).")
@filter_options
@click.pass_context
def queue_create_cmd(
    ctx: click.Context,
    name: str,
    source: str,
    needs: int | None,
    adjudicate: bool,
    adjudicators: str | None,
    **filters,
) -> None:
    """Put replies in a queue. With --study, the disagreement sources look only at that study's replies."""
    from limachat.dialogues import queues
    from limachat.dialogues.export import Filters

    store = _store(ctx)
    try:
        chosen = Filters(**filters)
        if source != "filter" and chosen.args() and chosen.args() != ["--study", str(chosen.study)]:
            raise ValueError(f"--source {source} takes no export filters but --study; drop {chosen.args()[0]}")
        q = queues.create(
            store,
            name,
            source,
            filters=chosen,
            study=chosen.study,
            needs=needs,
            purpose="adjudicate" if adjudicate else "rate",
            adjudicators=_names(adjudicators),
        )
    except ValueError as e:
        raise click.ClickException(f"{e} (see `limachat queue create --help`)") from None
    click.echo(queues.status_line(q, queues.status(store, q)))


@queue_cmd.command("status")
@click.argument("name", required=False)
@click.option("--items", is_flag=True, help="List each reply with everyone's labels and reasons.")
@click.pass_context
def queue_status_cmd(ctx: click.Context, name: str | None, items: bool) -> None:
    """How far a queue (or every queue) has got: replies done, and ratings per annotator."""
    from limachat.dialogues import queues

    store = _store(ctx)
    chosen = [store.queue(name)] if name else store.queues()
    if not chosen:
        click.echo("no queues yet (`limachat queue create`)")
    for q in chosen:
        click.echo(queues.status_line(q, queues.status(store, q)))
        if items:
            turns, labels = queues.state(store, q)
            for n, turn in enumerate(turns, 1):
                said = "; ".join(
                    f"{who}: {label}" + (f" ({reason})" if reason else "")
                    for who, (label, reason) in sorted(labels[turn].items())
                )
                text = " ".join(store.turn(turn)["content"].split())[:70]
                click.echo(f"  {n}. {turn} {text!r}: {said or 'unrated'}")
