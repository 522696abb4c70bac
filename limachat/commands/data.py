"""Data in and out: `config`, `import`, `export` and `report`."""

from __future__ import annotations

from pathlib import Path

import click

from limachat import context
from limachat.dialogues.formats import FORMATS
from limachat.dialogues.values import RATERS
from limachat.options import filter_options


@click.command("config")
@click.pass_context
def config_cmd(ctx: click.Context) -> None:
    """Print the resolved settings as TOML-like lines."""
    import json

    settings = context.settings(ctx)
    data = settings.model_dump(mode="json")
    click.echo(
        "# sampling presets in force: "
        + ", ".join(f"{c.name} = {settings.preset_name(c.name)}" for c in settings.checkpoints)
    )
    for key, value in data.items():
        if isinstance(value, dict):
            click.echo(f"[{key}]")
            for k, v in value.items():
                click.echo(f"{k} = {json.dumps(v)}")
        else:
            click.echo(f"{key} = {json.dumps(value)}")


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="Detected from each record when not given.",
)
@click.option("--skip-bad", is_flag=True, help="Skip bad lines (and count them) instead of stopping at the first.")
@click.pass_context
def import_cmd(ctx: click.Context, file: Path, fmt: str | None, skip_bad: bool) -> None:
    """Import conversations (LIMA, messages/OpenAI, ShareGPT, Alpaca, OpenAssistant trees, preference pairs;
    JSONL or one JSON array) or sessions exported by limachat."""
    from limachat.dialogues.formats import FormatError, import_file

    try:
        report = import_file(context.store(context.settings(ctx)), file, fmt, skip_bad=skip_bad)
    except FormatError as e:
        raise click.ClickException(f"{e} (nothing imported; --skip-bad skips such lines)") from None
    for line in report.warnings + report.bad:
        click.echo(line, err=True)
    click.echo(report.summary())


@click.command("export")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["lima", "messages", "sessions", "preference", "kto"]),
    required=True,
    help="lima, messages: rated chains (SFT); preference: chosen/rejected pairs (DPO, reward models); "
    "kto: replies labelled good or bad; sessions: every session in full (a backup).",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="The JSONL file to write.")
@filter_options
@click.option("--dedupe", is_flag=True, help="preference, kto: one row per (prompt, chosen, rejected) or reply.")
@click.option(
    "--pass-is-good", is_flag=True, help="kto: a pass counts as good (without it, pass replies are left out)."
)
@click.option(
    "--hf-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write a Hub-ready dataset folder: Parquet per format and a dataset card.",
)
@click.option(
    "--force", is_flag=True, help="With --hf-dir: replace this format's config that limachat wrote there before."
)
@click.option("--license", "license_", help="The dataset card's license (a Hub license id, e.g. cc-by-4.0).")
@click.option("--push-to-hub", "repo", help="Upload the --hf-dir folder as this dataset repo, with your own token.")
@click.option("--private", is_flag=True, help="With --push-to-hub: create the repo private.")
@click.pass_context
def export_cmd(
    ctx: click.Context,
    fmt: str,
    output: Path | None,
    dedupe: bool,
    pass_is_good: bool,
    hf_dir: Path | None,
    force: bool,
    license_: str | None,
    repo: str | None,
    private: bool,
    **filters,
) -> None:
    """Export training data: rated chains (lima, messages), preference pairs (preference), labelled replies
    (kto), or every session in full (sessions); as JSONL, and as a Hub-ready folder with --hf-dir."""
    from limachat.dialogues import dataset
    from limachat.dialogues.export import Filters

    if output is None and hf_dir is None:
        raise click.ClickException("give -o/--output FILE, --hf-dir DIR, or both")
    if hf_dir is not None and fmt not in dataset.HUB_FORMATS:
        raise click.ClickException(
            f"--hf-dir takes --format {', '.join(dataset.HUB_FORMATS)}; a sessions backup is not a dataset"
        )
    if repo and hf_dir is None:
        raise click.ClickException("--push-to-hub uploads the --hf-dir folder: give --hf-dir DIR too")
    if repo:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(repo)
        except HFValidationError as e:
            raise click.ClickException(f"--push-to-hub {repo!r}: {str(e).split('. ')[0]}") from None
    if output is not None:
        context.writable(output, "-o/--output")
    if hf_dir is not None and (hf_dir.is_file() or not hf_dir.parent.is_dir()):
        raise click.ClickException(
            f"--hf-dir {hf_dir}: " + ("is a file" if hf_dir.is_file() else f"the folder {hf_dir.parent} does not exist")
        )
    try:
        chosen = Filters(**filters)
        given = chosen.args()  # the filters set away from their defaults
        if fmt == "sessions" and given:
            raise ValueError(f"--format sessions writes every session in full; drop {given[0]}")
        out = dataset.Output(
            context.store(context.settings(ctx)), fmt, chosen, dedupe=dedupe, pass_is_good=pass_is_good
        )
        if output is not None:
            rows = dataset.write_jsonl(out, output)
        else:
            rows = list(out)
        click.echo(f"{output or hf_dir}: {out.summary()}")
        if hf_dir is not None:
            dataset.write_hub_dir(out, rows, hf_dir, license_, force=force)
            click.echo(f"{hf_dir}: a dataset folder (load it with datasets.load_dataset({str(hf_dir)!r}))")
        if repo:
            click.echo(f"uploaded: {dataset.push(hf_dir, repo, private)}")
    except ValueError as e:
        raise click.ClickException(str(e)) from None


@click.command("report")
@click.option("--study", help="The report of this study (`limachat study`): intervals, differences, leaderboard.")
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), help="Write the Figure 7 chart here.")
@click.option(
    "--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), help="Write label counts and shares here."
)
@click.option(
    "--html", type=click.Path(dir_okay=False, path_type=Path), help="With --study: one self-contained page to share."
)
@click.option(
    "--raters",
    type=click.Choice(RATERS),
    help="Only the report by these: humans, judges, all, or adjudicated (an adjudicator's final label wins). "
    "Default: people, and judges once any judge rated; a study's report adds adjudicated once anyone adjudicated.",
)
@click.pass_context
def report_cmd(
    ctx: click.Context,
    study: str | None,
    png: Path | None,
    csv_path: Path | None,
    html: Path | None,
    raters: str | None,
) -> None:
    """LIMA's Figure 7 per checkpoint: label shares, fails, excellent share by turn, agreement; by people
    and, once `limachat judge` has run, by the judges, with how far they agree with the people. With
    --study: that study's report, every share with its 95% interval over conversations."""
    from limachat.dialogues import report as rep

    for path, option in ((png, "--png"), (csv_path, "--csv"), (html, "--html")):
        if path is not None:
            context.writable(path, option)
    if study is not None:
        from limachat.commands.study import write_report

        click.echo(
            write_report(
                context.store(context.settings(ctx)), study, html=html, png=png, csv_path=csv_path, raters=raters
            ),
            nl=False,
        )
        for path in (html, png, csv_path):
            if path:
                click.echo(f"wrote {path}", err=True)
        return
    if html:
        raise click.ClickException("--html needs --study NAME (the page is a study's report)")
    doc = rep.document(context.store(context.settings(ctx)), raters)
    click.echo(rep.render(doc, rep.heldout(context.settings(ctx).home)), nl=False)
    if csv_path:
        csv_path.write_text(rep.to_csv(*doc.reports))
    if png:
        rep.figure7(doc.reports, png)
        click.echo(f"chart: {png}", err=True)
