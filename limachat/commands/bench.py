"""`limachat bench answer|judge|report|export|import`: MT-Bench turn by turn, in FastChat's own files
(docs/bench.md)."""

from __future__ import annotations

from pathlib import Path

import click

from limachat import context
from limachat.commands.curate import _endpoint, endpoint_options


@click.group("bench")
def bench_cmd() -> None:
    """MT-Bench (or any question file in FastChat's layout) turn by turn: answers people and judges rate alike."""


def _names(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise click.ClickException("--checkpoints: name one or more, comma-separated")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise click.ClickException(f"--checkpoints: {', '.join(dupes)} named twice")
    return names


def _checkpoints(settings, names: list[str], base_url: str | None, api_key: str | None) -> list:
    """Each name: a configured checkpoint (limachat.toml), else a model the endpoint serves (--base-url,
    default the local server) under that name. Each must be served, checked before any work."""
    from limachat.curate.common import reachable
    from limachat.serve.checkpoints import Checkpoint

    configured = {c.name for c in settings.checkpoints}
    out = []
    for name in names:
        if base_url is None and name in configured:
            ck = settings.checkpoint(name)
        else:
            ck = settings.endpoint(Checkpoint(name=name, model=name, base_url=base_url, api_key=api_key))
        try:
            reachable(
                ck,
                f"checkpoint {name!r}:",
                ("give --base-url (any OpenAI-compatible /v1 URL)", "name models it serves in --checkpoints"),
            )
        except ValueError as e:
            raise click.ClickException(str(e)) from None
        out.append(ck)
    return out


@bench_cmd.command("answer")
@click.argument("questions")
@click.option("--name", required=True, help="The bench run's name: judge, report and export take it.")
@click.option(
    "--checkpoints", required=True, help="Comma-separated: configured checkpoints or models the endpoint serves."
)
@click.option(
    "--base-url",
    help="An OpenAI-compatible /v1 URL serving the checkpoints (default: configured, else the local server).",
)
@click.option("--api-key", help="Its API key.")
@click.option("--limit", type=click.IntRange(1), help="Only the first N questions (after --categories).")
@click.option("--categories", help="Only these categories, comma-separated (e.g. writing,roleplay).")
@click.option(
    "--temperature",
    type=click.FloatRange(0, 2),
    help="One temperature for every question (default: FastChat's per category: writing and roleplay 0.7; "
    "extraction, math, coding and reasoning 0; stem and humanities 0.1).",
)
@click.option("--max-tokens", type=click.IntRange(1), help="New tokens per reply at most (default 1024, as FastChat).")
@click.option(
    "--penalty",
    type=click.FloatRange(min=1.0),
    help="LIMA's repetition penalty over the conversation's replies (e.g. 1.2; default: none).",
)
@click.option(
    "--concurrency", type=click.IntRange(1, 256), default=8, show_default=True, help="Replies in flight at once."
)
@click.pass_context
def answer_cmd(
    ctx,
    questions,
    name,
    checkpoints,
    base_url,
    api_key,
    limit,
    categories,
    temperature,
    max_tokens,
    penalty,
    concurrency,
):
    """Each checkpoint answers QUESTIONS (FastChat's question.jsonl layout, MT-Bench's included, or a limachat
    prompt set: a file, "bundled" or "scripted") turn by turn, every turn on its own history. Each answer is
    a session of mode `bench` that people open, rate and compare in the app. A second run answers only
    what is missing."""
    from limachat.bench_answer import pick, run
    from limachat.dialogues.bench import read_questions

    settings = context.settings(ctx)
    cats = tuple(c.strip() for c in (categories or "").split(",") if c.strip()) or None
    names = _names(checkpoints)
    try:  # the file and the options first, then the endpoints: bad input costs no request
        asked = pick(read_questions(questions), cats, limit)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    cks = _checkpoints(settings, names, base_url, api_key)
    try:
        summary = run(
            context.store(settings),
            settings,
            asked,
            name,
            cks,
            temperature_override=temperature,
            max_tokens=max_tokens,
            penalty=penalty,
            concurrency=concurrency,
        )
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    if summary.failed:
        raise click.ClickException(summary.line())
    click.echo(summary.line())


@bench_cmd.command("judge")
@click.argument("name")
@click.option(
    "--mode",
    type=click.Choice(["single", "pairwise"]),
    required=True,
    help="single: a 1-10 grade per reply; pairwise: each pair, both orders.",
)
@click.option(
    "--judge-prompts",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Judge prompts in FastChat's judge_prompts.jsonl layout (your copy of MT-Bench's; default: limachat's own).",
)
@click.option(
    "--reference",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Reference answers in FastChat's layout (reference_answer/<model>.jsonl) for math, reasoning and coding.",
)
@click.option(
    "--runs",
    type=click.IntRange(1, 20),
    default=1,
    show_default=True,
    help="Judge every reply this many times (the report shows the spread).",
)
@click.option(
    "--temperature",
    type=click.FloatRange(0, 2),
    default=0.0,
    show_default=True,
    help="The judge's sampling temperature.",
)
@click.option(
    "--max-tokens", type=click.IntRange(16), help="The judgment's length at most (default: curate.judge_max_tokens)."
)
@click.option(
    "--constrain/--no-constrain",
    default=None,
    help="Make the judgment end in its verdict with vLLM's structured outputs (default: on for the local server, "
    "off for other endpoints, which may not take it).",
)
@click.option(
    "--limit", type=click.IntRange(1), help="At most this many judgments (after skipping those already made)."
)
@endpoint_options("judge")
@click.pass_context
def judge_cmd(
    ctx,
    name,
    mode,
    judge_prompts,
    reference,
    runs,
    temperature,
    max_tokens,
    constrain,
    limit,
    model,
    base_url,
    api_key,
    concurrency,
    prompt_version,
):
    """MT-Bench's judge over bench run NAME: single grades each reply 1-10 (the second turn with the whole
    conversation in view; math, reasoning and coding against references); pairwise judges each pair of
    checkpoints per question and turn twice, the answers' places swapped. Judgments already made are kept."""
    from limachat.curate import bench_judge

    settings = context.settings(ctx)
    endpoint = _endpoint(settings, "judge", model, base_url, api_key)
    if judge_prompts is not None and prompt_version is not None:
        raise click.ClickException(
            "--prompt-version picks one of limachat's own prompt files; drop it with --judge-prompts"
        )
    try:
        prompts_file = (
            judge_prompts
            if judge_prompts is not None
            else (bench_judge.own_prompts(prompt_version) if prompt_version else None)
        )
        summary = bench_judge.run(
            context.store(settings),
            endpoint,
            name,
            mode,
            prompts_file=prompts_file,
            reference_file=reference,
            runs=runs,
            temperature=temperature,
            max_tokens=max_tokens or settings.curate.judge_max_tokens,
            constrain=(endpoint.base_url == settings.local_base_url) if constrain is None else constrain,
            concurrency=concurrency or settings.curate.concurrency,
            limit=limit,
        )
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    if summary.failed:
        raise click.ClickException(
            f"{summary.line()}; {summary.failed} requests failed ({summary.error}): what was judged is kept, "
            "run the same command again to resume"
        )
    click.echo(summary.line())


@bench_cmd.command("report")
@click.argument("name")
@click.option("--judge", help="The judge's annotator name (default: the one that judged the run).")
@click.option(
    "--runs",
    type=click.IntRange(1, 20),
    help="Use the judge's first N runs (bench judge --runs N) and show their spread.",
)
@click.option("--html", type=click.Path(dir_okay=False, path_type=Path), help="One self-contained page to share.")
@click.option(
    "--png", type=click.Path(dir_okay=False, path_type=Path), help="The chart: grades per turn and per category."
)
@click.pass_context
def report_cmd(ctx, name, judge, runs, html, png):
    """Bench run NAME: mean grades per turn and checkpoint with intervals, the gap per turn, categories,
    pairwise win rates, the judge's biases, and the judge against people where people rated the answers."""
    from limachat.dialogues import bench_report

    settings = context.settings(ctx)
    for path, option in ((html, "--html"), (png, "--png")):
        if path is not None:
            context.writable(path, option)
    try:
        report = bench_report.build(context.store(settings), name, judge, runs)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(bench_report.markdown(report))
    bench_report.write(report, html_path=html, png=png)


@bench_cmd.command("export")
@click.argument("name")
@click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Write FastChat's layout here (data/<bench> for its scripts).",
)
@click.pass_context
def export_cmd(ctx, name, folder):
    """Bench run NAME in FastChat's layout: question.jsonl, model_answer/, model_judgment/ and people's
    votes under human_judgment/: FastChat's show_result.py and compute_agreement.py read them as they are."""
    from limachat.dialogues import bench

    settings = context.settings(ctx)
    counts = bench.export(context.store(settings), name, folder)
    click.echo(f"bench {name} -> {folder}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))


@bench_cmd.command("import")
@click.argument("name")
@click.option(
    "--questions",
    help="The run's questions, when NAME is a new run (FastChat's question.jsonl layout or a prompt set).",
)
@click.option(
    "--answers",
    "answer_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A FastChat model-answer file (model_answer/<model>.jsonl): one more checkpoint per model id. Repeatable.",
)
@click.option("--checkpoint", help="The checkpoint name of an --answers file of one model (default: its model_id).")
@click.option(
    "--votes",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Human votes in MT-Bench's layout (question_id, model_a, model_b, winner, judge, turn): people's verdicts.",
)
@click.pass_context
def import_cmd(ctx, name, questions, answer_files, checkpoint, votes):
    """Answers and votes from FastChat's files join bench run NAME: a published model's answers are one more
    checkpoint (rated, judged and reported like the rest), expert votes are people's verdicts."""
    from limachat.dialogues import bench

    if not (answer_files or votes or questions):
        raise click.ClickException("give --answers, --votes or --questions")
    settings = context.settings(ctx)
    store = context.store(settings)
    if questions:
        added = store.add_bench_questions(name, bench.read_questions(questions))
        click.echo(f"bench {name}: {added} questions added")
    store.bench_questions(name)  # no such run: one line
    for path in answer_files:
        c = bench.add_answers(store, name, path, checkpoint)
        click.echo(
            f"{path}: {c['added']} answers added, {c['held']} already held, {c['unknown']} to questions run {name} does not hold"
        )
    if votes:
        c = bench.add_votes(store, name, votes)
        click.echo(
            f"{votes}: {c['added']} votes added as people's verdicts, {c['no answer']} on answers run {name} does not hold"
        )
