"""`limachat judge`, `limachat select` and `limachat revise`: curation from the command line (the
Collect tab runs the same commands as background jobs)."""

from __future__ import annotations

from pathlib import Path

import click

from limachat import context
from limachat.options import filter_options


def _endpoint(settings, which: str, model: str | None, base_url: str | None, api_key: str | None):
    """The configured judge or teacher endpoint (curate.judge / curate.teacher), with any overrides."""
    c = getattr(settings.curate, which)
    update = {k: v for k, v in (("model", model), ("base_url", base_url), ("api_key", api_key)) if v is not None}
    return settings.endpoint(c.model_copy(update=update) if update else c)


def _selection_filters(checkpoint, annotator, mode, since, until):
    from limachat.dialogues.export import Filters

    return Filters(checkpoint=checkpoint, annotator=annotator, mode=mode, since=since, until=until)


SESSION_FILTERS = (
    "checkpoint",
    "annotator",
    "mode",
    "since",
    "until",
)  # the export filters that pick sessions and turns


def selection_options(f):
    """Which stored turns a curation command reads: the export filters that pick sessions and turns, and a limit."""
    f = click.option("--limit", type=click.IntRange(1), help="At most this many (after skipping those already done).")(
        f
    )
    return filter_options(f, only=SESSION_FILTERS)


def endpoint_options(which: str):
    def wrap(f):
        opts = [
            click.option(
                "--model", help=f"Model id at the endpoint (curate.{which}.model; default: the local server's base)."
            ),
            click.option(
                "--base-url", help=f"An OpenAI-compatible /v1 URL (curate.{which}.base_url; default: the local server)."
            ),
            click.option("--api-key", help=f"Its API key (better kept in limachat.toml: curate.{which}.api_key)."),
            click.option(
                "--concurrency", type=click.IntRange(1, 256), help="Requests at once (curate.concurrency, default 8)."
            ),
            click.option(
                "--prompt-version", type=click.IntRange(1), help="An older prompt version (default: the newest)."
            ),
        ]
        for opt in reversed(opts):
            f = opt(f)
        return f

    return wrap


@click.command("judge")
@click.argument("judge_mode", metavar="MODE", type=click.Choice(["label", "score", "pairwise"]))
@selection_options
@endpoint_options("judge")
@click.pass_context
def judge_cmd(
    ctx,
    judge_mode,
    checkpoint,
    annotator,
    mode,
    since,
    until,
    limit,
    model,
    base_url,
    api_key,
    concurrency,
    prompt_version,
) -> None:
    """Label stored assistant turns with an LLM judge. MODE: label (fail/pass/excellent, LIMA's
    definitions), score (AlpaGasus' 0-5 accuracy) or pairwise (compare sessions, MT-Bench style,
    judged twice with the sides swapped). Turns the judge already answered are skipped."""
    from limachat.curate import judge

    settings = context.settings(ctx)
    endpoint = _endpoint(settings, "judge", model, base_url, api_key)
    try:
        summary = judge.run(
            context.store(settings),
            endpoint,
            judge_mode,
            _selection_filters(checkpoint, annotator, mode, since, until),
            limit=limit,
            concurrency=concurrency or settings.curate.concurrency,
            max_tokens=settings.curate.judge_max_tokens,
            prompt_version=prompt_version,
        )
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(summary.line())


@click.command("select")
@click.option("--name", required=True, help="Save the selection under this name (`export --selection NAME`).")
@click.option("--size", type=click.IntRange(1), required=True, help="Chains to choose.")
@click.option(
    "--clusters",
    type=click.IntRange(1),
    help="K-means clusters; k-center starts from the chain nearest each centroid (default: half of --size).",
)
@click.option("--per-cluster", is_flag=True, help="Choose within each cluster, in proportion to its size.")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of K-means and of the random samples compared against."
)
@click.option("--replace", is_flag=True, help="Replace a saved selection of the same name.")
@filter_options
@click.pass_context
def select_cmd(ctx, name, size, clusters, per_cluster, seed, replace, **filters) -> None:
    """Choose a diverse subset of the stored chains (LTD: embeddings, K-means, greedy k-center) and save
    it as a named selection, with its coverage against random samples of the same size."""
    from limachat.curate.select import select
    from limachat.dialogues.export import Filters

    settings = context.settings(ctx)
    try:
        result = select(
            context.store(settings),
            Filters(**filters),
            name=name,
            size=size,
            clusters=clusters,
            per_cluster=per_cluster,
            seed=seed,
            embedding_model=settings.curate.embedding_model,
            max_tokens=settings.curate.embedding_max_tokens,
            replace=replace,
        )
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(result.line())


@click.command("filter")
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--recipe", type=click.Choice(["lima"]), required=True, help="lima: LIMA's rules (section 2.1).")
@click.option("--name", required=True, help="Save the kept chains as this selection (`export --selection NAME`).")
@click.option("--min-chars", type=click.IntRange(1), default=1200, show_default=True, help="Shortest answer kept.")
@click.option("--max-chars", type=click.IntRange(1), default=4096, show_default=True, help="Longest answer kept.")
@click.option("--per-category", type=click.IntRange(1), help="At most this many per community, sampled (default: all).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the sample and the title-or-body draw.")
@click.option("--replace", is_flag=True, help="Replace a saved selection of the same name.")
@click.pass_context
def filter_cmd(ctx, source, recipe, name, min_chars, max_chars, per_category, seed, replace) -> None:
    """Filter question-and-answer data (SOURCE: JSON Lines of questions with their answers, or any format
    `limachat import` reads) by a recipe's named steps, import what is left and save it as a selection."""
    from limachat.curate import lima

    if min_chars > max_chars:
        raise click.ClickException(f"--min-chars {min_chars} is more than --max-chars {max_chars}")
    settings = lima.Settings(min_chars=min_chars, max_chars=max_chars, per_category=per_category, seed=seed)
    try:
        result = lima.run(lima.read(source), settings)
        click.echo(result.table())
        kept = lima.save(context.store(context.settings(ctx)), result, name, settings, source.name, replace=replace)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(
        f"selection {name}: {kept} chains (limachat export --selection {name}; limachat train --from-db --selection {name})"
    )


@click.command("ablate")
@click.argument("export", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Names the checkpoints (NAME-all, NAME-without-GROUP ...) and the report.")
@click.option(
    "--by",
    type=click.Choice(["annotator", "kind", "source", "selection"]),
    default="annotator",
    show_default=True,
    help="The groups to leave out one at a time: each annotator, annotator kind (human, judge, teacher, "
    "adjudicator), source (gold edits, teacher revisions, judge- or people-labelled chains) or selection.",
)
@click.option(
    "--design",
    type=click.Choice(["leave-one-out", "quantity", "quality", "diversity"]),
    default="leave-one-out",
    show_default=True,
    help="leave-one-out: every group's worth; LIMA's ablations: quantity (1x, 2x, 4x of the export), quality "
    "(chains labelled pass or better against as many drawn from all), diversity (the largest group alone "
    "against as many drawn from every group).",
)
@click.option(
    "--prompts",
    default="scripted",
    show_default=True,
    help="The scripted conversations replayed on every variant (a prompt set, or a FastChat question file).",
)
@click.option("--conversations", type=click.IntRange(1), help="Replay only the first N of them.")
@click.option(
    "--heldout",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Chains the held-out loss is measured on (default: the bundled held-out chains).",
)
@click.option("--epochs", type=click.IntRange(1), default=1, show_default=True, help="Epochs of every variant.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the designs' samples.")
@click.pass_context
def ablate_cmd(ctx, export, name, by, design, prompts, conversations, heldout, epochs, seed) -> None:
    """Which data bought which gain: train a checkpoint per variant of EXPORT (`limachat export`), serve
    them all, replay the scripted conversations, have the judge label every reply, and report each
    group's effect on the excellent share, the fail share and the held-out loss, with intervals."""
    from limachat.ablate import run

    settings = context.settings(ctx)
    try:
        report = run(
            context.store(settings),
            settings,
            export,
            name=name,
            by=by,
            design=design,
            prompts=prompts,
            conversations=conversations,
            heldout=heldout,
            epochs=epochs,
            seed=seed,
            progress=context.progress,
        )
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(report)
    click.echo(f"(written to {settings.layout.reports / f'ablate-{name}.md'} and .json)")


@click.command("revise")
@click.option(
    "--labels",
    default="fail,pass",
    show_default=True,
    help="Revise turns whose label (the lowest among --raters) is one of these.",
)
@click.option(
    "--raters",
    type=click.Choice(["humans", "judges", "all"]),
    default="all",
    show_default=True,
    help="Whose labels choose the turns.",
)
@click.option("--selection", help="Only turns of this named selection's chains (`limachat select`).")
@click.option(
    "--rounds",
    type=click.IntRange(1, 10),
    help="Revise, train `<name>-rN`, serve it, replay the same instructions, judge and revise again.",
)
@click.option(
    "--name", default="citing", show_default=True, help="Checkpoint names of the rounds: NAME-r1, NAME-r2 ..."
)
@click.option("--epochs", type=click.IntRange(1), help="Training epochs per round (default: the recipe's).")
@click.option("--max-steps", type=click.IntRange(1), help="Stop each round's training after this many optimizer steps.")
@selection_options
@endpoint_options("teacher")
@click.pass_context
def revise_cmd(
    ctx,
    labels,
    raters,
    selection,
    rounds,
    name,
    epochs,
    max_steps,
    checkpoint,
    annotator,
    mode,
    since,
    until,
    limit,
    model,
    base_url,
    api_key,
    concurrency,
    prompt_version,
) -> None:
    """Revise assistant turns with a teacher LLM against per-category rubrics (CITING). The revisions
    are gold edits of kind `teacher`: review them in the app, train on them with
    `train --from-db --prefer-gold --gold-from teachers`."""
    from limachat.dialogues.export import Filters
    from limachat.dialogues.values import LABELS
    from limachat.rounds import rounds as run_rounds

    settings = context.settings(ctx)
    wanted = tuple(x.strip() for x in labels.split(",") if x.strip())
    bad = [x for x in wanted if x not in LABELS]
    if bad or not wanted:
        raise click.ClickException(f"--labels: {', '.join(bad) or 'nothing'} is not one of {', '.join(LABELS)}")
    if prompt_version is not None:
        raise click.ClickException("--prompt-version: revise has one prompt version so far (1)")
    if not rounds and (epochs or max_steps):
        raise click.ClickException(
            f"--{'epochs' if epochs else 'max-steps'}: only with --rounds (they set its training)"
        )
    endpoint = _endpoint(settings, "teacher", model, base_url, api_key)
    f = Filters(checkpoint=checkpoint, annotator=annotator, mode=mode, since=since, until=until, selection=selection)
    try:
        for line in run_rounds(
            context.store(settings),
            settings,
            endpoint,
            f,
            rounds=rounds,
            name=name,
            epochs=epochs,
            max_steps=max_steps,
            labels=wanted,
            raters=raters,
            limit=limit,
            concurrency=concurrency or settings.curate.concurrency,
        ):
            click.echo(line)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
