"""The `limachat` command: the group, its error discipline, and the commands it assembles (each from its
own module; none imports this one). Heavy imports (torch, vllm) stay inside the commands that need them."""

from __future__ import annotations

from pathlib import Path

import click

from limachat.commands.bench import bench_cmd
from limachat.commands.curate import ablate_cmd, filter_cmd, judge_cmd, revise_cmd, select_cmd
from limachat.commands.data import config_cmd, export_cmd, import_cmd, report_cmd
from limachat.commands.run import app_cmd, base_cmd, demo_cmd, serve_cmd, users_cmd
from limachat.commands.study import queue_cmd, study_cmd
from limachat.commands.train import train_cmd
from limachat.serve.net import AddressError
from limachat.settings import SettingsError, load_settings


class _Main(click.Group):
    """Errors a user can fix are one line (`Error: ...`, exit 1). Anything else is an internal error:
    its traceback goes to <home>/logs/limachat.log and the user gets one line that points there."""

    def main(self, *args, **kwargs):
        """Click's own handling, except that a usage error is one line too (not usage + hint + error)."""
        import sys

        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as e:
            names, ctx = [], e.ctx
            while ctx is not None and ctx.parent is not None:
                names.insert(0, ctx.info_name)
                ctx = ctx.parent
            where = " ".join(["limachat", *names])
            click.echo(f"Error: {' '.join(e.format_message().split())} (see `{where} --help`)", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)

    def invoke(self, ctx: click.Context):
        from limachat.demo.users import AuthFileError
        from limachat.dialogues.formats import FormatError
        from limachat.dialogues.store import StoreError
        from limachat.logs import internal

        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt, SystemExit):
            raise
        except (StoreError, FormatError, AuthFileError, SettingsError, AddressError) as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:
            if e.filename is None:
                raise click.ClickException(internal(e, f"limachat {ctx.invoked_subcommand or ''}".strip())) from None
            raise click.ClickException(f"{e.filename}: {e.strerror}") from None
        except Exception as e:  # noqa: BLE001 - logged with its traceback
            raise click.ClickException(internal(e, f"limachat {ctx.invoked_subcommand or ''}".strip())) from None


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="LIMACHAT_CONFIG",
    help="TOML settings file (default ./limachat.toml when present).",
)
@click.option(
    "--home", type=click.Path(file_okay=False, path_type=Path), help="Data directory (LIMACHAT_HOME, default ./data)."
)
@click.pass_context
def main(ctx: click.Context, config: Path | None, home: Path | None) -> None:
    """limachat: chat with, compare, rate and train LIMA's zero-shot and dialogue checkpoints."""
    import os

    if config is not None:
        os.environ["LIMACHAT_CONFIG"] = str(config)
    from limachat.logs import setup

    try:
        settings = load_settings(home=home)
    except SettingsError as e:
        raise click.ClickException(str(e)) from None
    ctx.obj = {"settings": settings}
    if ctx.invoked_subcommand not in (None, "config"):
        try:
            setup(settings.home)
        except OSError as e:
            raise click.ClickException(f"home {settings.home}: cannot write its logs folder ({e.strerror})") from None


for command in (
    config_cmd,
    base_cmd,
    serve_cmd,
    demo_cmd,
    app_cmd,
    import_cmd,
    export_cmd,
    report_cmd,
    users_cmd,
    train_cmd,
    judge_cmd,
    select_cmd,
    filter_cmd,
    ablate_cmd,
    revise_cmd,
    study_cmd,
    queue_cmd,
    bench_cmd,
):
    main.add_command(command)

if __name__ == "__main__":
    main()
