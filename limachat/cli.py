"""The `limachat` command. Heavy imports (torch, vllm) stay inside the commands that need them."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import click

from limachat.context import progress as _progress
from limachat.context import settings as _settings
from limachat.context import store as _store
from limachat.curate.command import judge_cmd, revise_cmd, select_cmd
from limachat.layout import BASE_NAME, VARIANTS
from limachat.options import filter_options
from limachat.serve.net import AddressError, check_bind, url_host
from limachat.settings import App, Server, Settings, SettingsError, load_settings
from limachat.study_command import study_cmd
from limachat.train.command import train_cmd

_auth_option = click.option(
    "--auth",
    "auth_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Users log in with a user:password line of FILE; ratings carry the user's name.",
)


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


@main.command("config")
@click.pass_context
def config_cmd(ctx: click.Context) -> None:
    """Print the resolved settings as TOML-like lines."""
    import json

    settings = _settings(ctx)
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


def _prepare(settings: Settings, base: str | None):
    from limachat.serve.base import BaseModelError, prepare_base

    try:
        return prepare_base(settings.home, base if base is not None else settings.server.base, _progress)
    except BaseModelError as e:
        raise click.ClickException(str(e)) from None


@main.command("base")
@click.option("--base", help="A Hugging Face model id or local folder instead of the bundled SmolLM2-135M-Instruct.")
@click.pass_context
def base_cmd(ctx: click.Context, base: str | None) -> None:
    """Convert the bundled model to a safetensors checkpoint once (no-op when up to date)."""
    started = time.monotonic()
    prepared = _prepare(_settings(ctx), base)
    click.echo(f"base: {prepared.model}\nuntrained adapter: {prepared.adapter}\n({time.monotonic() - started:.1f} s)")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM stop the command. SIGINT too: a shell's background job starts with Ctrl-C
    ignored, and Python keeps it that way."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)


def _serve(settings: Settings, prepared, *, app: bool = False, users: dict[str, str] | None = None) -> None:
    from limachat.serve.server import (
        ServerConfig,
        ServerError,
        VLLMServer,
        find_adapters,
        has_cuda_gpu,
        pidfile,
        stop_stale,
        supervise,
    )

    try:
        adapters = find_adapters(settings.home, prepared.adapter, prepared.model)
    except ServerError as e:
        raise click.ClickException(str(e)) from None
    for a in adapters:
        _progress(f"{a.name}: {a.describe()}")
    s = settings.server
    gpu = {"cuda": True, "cpu": False}.get(s.device, None)
    config = ServerConfig(
        model=prepared.model,
        adapters=adapters,
        host=s.host,
        port=s.port,
        gpu=has_cuda_gpu() if gpu is None else gpu,
        dtype=s.dtype,
        enforce_eager=s.enforce_eager,
        max_model_len=s.max_model_len,
        max_lora_rank=s.max_lora_rank,
        kv_cache_gib=s.kv_cache_gib,
        extra_args=s.extra_args,
    )
    server = VLLMServer(config, settings.layout.vllm_log(s.port), pidfile(settings.home, s.port))
    stale = stop_stale(settings.home, s.port)
    if stale:
        _progress(f"stopped the vLLM server (pid {stale}) an earlier limachat left on port {s.port}")

    _stop_on_signals()
    ui = None

    def ready() -> None:
        nonlocal ui
        names = ", ".join([BASE_NAME, *(a.name for a in adapters)])
        click.echo(
            f"vLLM ready in {server.start_seconds:.0f} s: {config.url} serving {names}."
            f"{'' if app else ' Ctrl-C stops it.'}",
            err=True,
        )
        if app and ui is None:
            ui = _start_app(settings, users, block=False)

    try:
        supervise(
            server,
            timeout=s.start_timeout,
            progress=_progress,
            on_ready=ready,
            again=f"limachat {'demo' if app else 'serve'}",
        )
    except ServerError as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:
        _progress("stopping vLLM ...")
    finally:
        if ui is not None:
            ui.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    _progress("stopped")


PORT = click.IntRange(1, 65535)


@main.command("serve")
@click.option("--port", type=PORT, help=f"Port (server.port, default {Server().port}).")
@click.option("--host", help="Address to bind (server.host, default 127.0.0.1).")
@click.option("--base", help="A Hugging Face model id or local folder instead of the bundled model.")
@click.pass_context
def serve_cmd(ctx: click.Context, port: int | None, host: str | None, base: str | None) -> None:
    """Serve the base with the `zero-shot` and `dialogue` LoRA adapters through vLLM until Ctrl-C."""
    settings = _settings(ctx)
    if port is not None:
        settings.server.port = port
    if host is not None:
        settings.server.host = host
    check_bind(settings.server.host, what="--host" if host else "server.host")  # the port may hold our own stale server
    _serve(settings, _prepare(settings, base))


@main.command("demo")
@click.option("--base", help="A Hugging Face model id or local folder instead of the bundled model.")
@_auth_option
@click.pass_context
def demo_cmd(ctx: click.Context, base: str | None, auth_file: Path | None) -> None:
    """Everything `make demo` runs: prepare the base, train both adapters on the bundled set (once;
    skipped while data and settings are unchanged), serve both checkpoints with vLLM and the app on
    top of them until Ctrl-C."""
    from limachat.train.command import run
    from limachat.train.data import bundled_examples, split

    settings = _settings(ctx)
    users = _users(auth_file)
    check_bind(settings.app.host, settings.app.port, "app.host")
    prepared = _prepare(settings, base)
    run(settings, list(VARIANTS), split(bundled_examples()), prepared.model, {}, progress=_progress)
    _serve(settings, prepared, app=True, users=users)


def _users(auth_file: Path | None) -> dict[str, str] | None:
    """The users of an --auth file (read before anything starts, so a bad file stops nothing)."""
    from limachat.demo.users import AuthFileError, plain, read_users

    if auth_file is None:
        return None
    try:
        users = read_users(auth_file)
    except AuthFileError as e:
        raise click.ClickException(f"--auth: {e}") from None
    if plain(users):
        _progress(
            f"warning: --auth {auth_file}: the password of {', '.join(plain(users))} is stored in plain text; "
            f"store a hash with `limachat users add NAME --file {auth_file}`"
        )
    return users


def _start_app(settings: Settings, users: dict[str, str] | None, *, block: bool):
    """Build the Gradio app over the store and the configured checkpoints and serve it."""
    from limachat.demo.app import app_checkpoints, build_app, launch
    from limachat.serve.client import ChatClient

    checkpoints = app_checkpoints(settings)
    for ck in checkpoints:
        _progress(f"{ck.name}: {ck.model} at {ck.base_url} ({ChatClient(ck).status()})")
    app = build_app(_store(settings), checkpoints, settings, auth=users is not None)
    url = f"http://{url_host(settings.app.host)}:{settings.app.port}"
    launch(app, settings, users=users, block=False)
    click.echo(
        f"app ready: {url}{' (log in as a user of the --auth file)' if users else ''}. Ctrl-C stops it.", err=True
    )
    if block:
        try:
            while True:
                time.sleep(0.5)
        except KeyboardInterrupt:
            _progress("stopping the app ...")
        finally:
            app.close()
    return app


@main.command("app")
@click.option("--port", type=PORT, help=f"Port (app.port, default {App().port}).")
@click.option("--host", help="Address to bind (app.host, default 127.0.0.1).")
@_auth_option
@click.pass_context
def app_cmd(ctx: click.Context, port: int | None, host: str | None, auth_file: Path | None) -> None:
    """Only the Gradio app, against endpoints already running (`limachat serve`, or the configured ones)."""
    settings = _settings(ctx)
    if port is not None:
        settings.app.port = port
    if host is not None:
        settings.app.host = host
    check_bind(settings.app.host, settings.app.port, "--host" if host else "app.host")
    users = _users(auth_file)
    _stop_on_signals()
    _start_app(settings, users, block=True)
    _progress("stopped")


def _writable(path: Path, option: str) -> None:
    """An output file's folder must exist (and the path must not be a folder): checked before any work."""
    if path.is_dir():
        raise click.ClickException(f"{option} {path}: is a folder; give a file name")
    if not path.parent.is_dir():
        raise click.ClickException(f"{option} {path}: the folder {path.parent} does not exist")


@main.command("import")
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
        report = import_file(_store(_settings(ctx)), file, fmt, skip_bad=skip_bad)
    except FormatError as e:
        raise click.ClickException(f"{e} (nothing imported; --skip-bad skips such lines)") from None
    for line in report.warnings + report.bad:
        click.echo(line, err=True)
    click.echo(report.summary())


@main.command("export")
@click.option("--format", "fmt", type=click.Choice(["lima", "messages", "sessions"]), required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@filter_options
@click.pass_context
def export_cmd(ctx: click.Context, fmt: str, output: Path, **filters) -> None:
    """Export rated chains as training data (lima, messages) or every session in full (sessions)."""
    from limachat.dialogues.export import Filters, export

    _writable(output, "-o/--output")
    defaults = {"min_turns": 1, "raters": "humans", "gold_from": "humans"}
    given = [k for k, v in filters.items() if v not in (None, False) and defaults.get(k) != v]
    if fmt == "sessions" and given:
        raise click.ClickException(
            f"--format sessions writes every session in full; drop --{given[0].replace('_', '-')}"
        )
    chains, turns = export(_store(_settings(ctx)), output, fmt, Filters(**filters))
    click.echo(f"{output}: {chains} {'sessions' if fmt == 'sessions' else 'chains'}, {turns} assistant turns")


@main.command("report")
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
            _writable(path, option)
    if study is not None:
        from limachat.study_command import write_report

        click.echo(write_report(_store(_settings(ctx)), study, html=html, png=png, csv_path=csv_path), nl=False)
        for path in (html, png, csv_path):
            if path:
                click.echo(f"wrote {path}", err=True)
        return
    if html:
        raise click.ClickException("--html needs --study NAME (the page is a study's report)")
    doc = rep.document(_store(_settings(ctx)))
    click.echo(rep.render(doc, rep.heldout(_settings(ctx).home)), nl=False)
    if csv_path:
        csv_path.write_text(rep.to_csv(*doc.reports))
    if png:
        rep.figure7(doc.reports, png)
        click.echo(f"chart: {png}", err=True)


@main.group("users")
def users_cmd() -> None:
    """Logins for `--auth`: a file of user names and password hashes."""


@users_cmd.command("add")
@click.argument("name")
@click.option(
    "--file",
    "path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The auth file to write (default <home>/users.txt); pass it to `--auth`.",
)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input instead of asking.")
@click.pass_context
def users_add(ctx: click.Context, name: str, path: Path | None, password_stdin: bool) -> None:
    """Add NAME (or change their password), stored as an Argon2id hash."""
    from limachat.demo.users import add_user

    path = path or _settings(ctx).layout.users
    _writable(path, "--file")
    import sys

    password = (
        sys.stdin.readline().rstrip("\n")
        if password_stdin
        else click.prompt(f"password for {name}", hide_input=True, confirmation_prompt=True)
    )
    replaced = add_user(path, name, password)
    click.echo(f"{'changed the password of' if replaced else 'added'} {name} in {path}; start with --auth {path}")


main.add_command(train_cmd)
main.add_command(judge_cmd)
main.add_command(select_cmd)
main.add_command(revise_cmd)
main.add_command(study_cmd)

if __name__ == "__main__":
    main()
