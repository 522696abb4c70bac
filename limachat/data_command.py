"""Data in and out: `config`, `import`, `export` and `report`."""

from __future__ import annotations

from pathlib import Path

import click

from limachat import context
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
    type=click.Choice(["lima", "messages", "sharegpt", "sessions"]),
    help="Detected from the first line when not given.",
)
@click.option("--skip-bad", is_flag=True, help="Skip bad lines (and count them) instead of stopping at the first.")
@click.pass_context
def import_cmd(ctx: click.Context, file: Path, fmt: str | None, skip_bad: bool) -> None:
    """Import conversations (LIMA, messages, ShareGPT JSONL) or sessions exported by limachat."""
    from limachat.dialogues.formats import FormatError, import_file

    try:
        report = import_file(context.store(context.settings(ctx)), file, fmt, skip_bad=skip_bad)
    except FormatError as e:
        raise click.ClickException(f"{e} (nothing imported; --skip-bad skips such lines)") from None
    for line in report.warnings + report.bad:
        click.echo(line, err=True)
    click.echo(report.summary())


@click.command("export")
@click.option("--format", "fmt", type=click.Choice(["lima", "messages", "sessions"]), required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@filter_options
@click.pass_context
def export_cmd(ctx: click.Context, fmt: str, output: Path, **filters) -> None:
    """Export rated chains as training data (lima, messages) or every session in full (sessions)."""
    from limachat.dialogues.export import Filters, export

    context.writable(output, "-o/--output")
    chosen = Filters(**filters)
    given = chosen.args()  # the filters set away from their defaults
    if fmt == "sessions" and given:
        raise click.ClickException(f"--format sessions writes every session in full; drop {given[0]}")
    chains, turns = export(context.store(context.settings(ctx)), output, fmt, chosen)
    click.echo(f"{output}: {chains} {'sessions' if fmt == 'sessions' else 'chains'}, {turns} assistant turns")


@click.command("report")
@click.option("--study", help="The report of this study (`limachat study`): intervals, differences, leaderboard.")
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), help="Write the Figure 7 chart here.")
@click.option(
    "--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), help="Write label counts and shares here."
)
@click.option(
    "--html", type=click.Path(dir_okay=False, path_type=Path), help="With --study: one self-contained page to share."
)
@click.pass_context
def report_cmd(
    ctx: click.Context, study: str | None, png: Path | None, csv_path: Path | None, html: Path | None
) -> None:
    """LIMA's Figure 7 per checkpoint: label shares, fails, excellent share by turn, agreement; by people
    and, once `limachat judge` has run, by the judges, with how far they agree with the people. With
    --study: that study's report, every share with its 95% interval over conversations."""
    from limachat.dialogues import report as rep

    for path, option in ((png, "--png"), (csv_path, "--csv"), (html, "--html")):
        if path is not None:
            context.writable(path, option)
    if study is not None:
        from limachat.study_command import write_report

        click.echo(
            write_report(context.store(context.settings(ctx)), study, html=html, png=png, csv_path=csv_path), nl=False
        )
        for path in (html, png, csv_path):
            if path:
                click.echo(f"wrote {path}", err=True)
        return
    if html:
        raise click.ClickException("--html needs --study NAME (the page is a study's report)")
    doc = rep.document(context.store(context.settings(ctx)))
    click.echo(rep.render(doc, rep.heldout(context.settings(ctx).home)), nl=False)
    if csv_path:
        csv_path.write_text(rep.to_csv(*doc.reports))
    if png:
        rep.figure7(doc.reports, png)
        click.echo(f"chart: {png}", err=True)
