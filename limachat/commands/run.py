"""Running limachat: `base`, `serve`, `demo`, `app`, and `users` (the logins of `--auth`)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import click

from limachat import context
from limachat.layout import BASE_NAME, VARIANTS
from limachat.serve.net import check_bind, url_host
from limachat.settings import App, Server, Settings

_auth_option = click.option(
    "--auth",
    "auth_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Users log in with a user:password line of FILE; ratings carry the user's name.",
)


def _prepare(settings: Settings, base: str | None):
    from limachat.serve.base import BaseModelError, prepare_base

    try:
        return prepare_base(settings.home, base if base is not None else settings.server.base, context.progress)
    except BaseModelError as e:
        raise click.ClickException(str(e)) from None


@click.command("base")
@click.option("--base", help="A Hugging Face model id or local folder instead of the bundled SmolLM2-135M-Instruct.")
@click.pass_context
def base_cmd(ctx: click.Context, base: str | None) -> None:
    """Convert the bundled model to a safetensors checkpoint once (no-op when up to date)."""
    started = time.monotonic()
    prepared = _prepare(context.settings(ctx), base)
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
        check_parallel,
        cpu_binding,
        find_adapters,
        has_cuda_gpu,
        lora_targets,
        pidfile,
        stop_stale,
        supervise,
    )

    try:
        adapters = find_adapters(settings.home, prepared.adapter, prepared.model)
    except ServerError as e:
        raise click.ClickException(str(e)) from None
    for a in adapters:
        context.progress(f"{a.name}: {a.describe()}")
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
        # Under pipeline parallelism a stage whose layers no adapter touches would wrap nothing, and vLLM's
        # compiled warm-up fails on a stage without LoRA modules (StopIteration in _create_merged_loras_inplace).
        lora_targets=lora_targets(prepared.model, adapters) if s.pipeline_parallel == 1 else None,
        api_key=settings.layout.api_key(create=True),
        adapter_roots=[settings.layout.checkpoints, *s.adapter_dirs],
        data_parallel=s.data_parallel,
        pipeline_parallel=s.pipeline_parallel,
        tensor_parallel=s.tensor_parallel,
    )
    try:
        check_parallel(config.model, s.tensor_parallel, s.pipeline_parallel)
        if not config.gpu and config.ranks > 1:
            cpu_binding(config.ranks)
    except ServerError as e:
        raise click.ClickException(str(e)) from None
    server = VLLMServer(config, settings.layout.vllm_log(s.port), pidfile(settings.home, s.port))
    stale = stop_stale(settings.home, s.port)
    if stale:
        context.progress(f"stopped the vLLM server (pid {stale}) an earlier limachat left on port {s.port}")

    _stop_on_signals()
    ui = None

    def ready() -> None:
        nonlocal ui
        names = ", ".join([BASE_NAME, *(a.name for a in adapters)])
        click.echo(
            f"vLLM ready in {server.start_seconds:.0f} s ({server.phases.summary()}"
            f"{', uncompiled for now' if server.eager_now else ''}): {config.url} serving {names}."
            f"{'' if app else ' Ctrl-C stops it.'}",
            err=True,
        )
        if app and ui is None:
            ui = _start_app(settings, users, block=False)

    try:
        supervise(
            server,
            timeout=s.start_timeout,
            progress=context.progress,
            on_ready=ready,
            again=f"limachat {'demo' if app else 'serve'}",
        )
    except ServerError as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:
        context.progress("stopping vLLM ...")
    finally:
        if ui is not None:
            ui.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    context.progress("stopped")


PORT = click.IntRange(1, 65535)


@click.command("serve")
@click.option("--port", type=PORT, help=f"Port (server.port, default {Server().port}).")
@click.option("--host", help="Address to bind (server.host, default 127.0.0.1).")
@click.option("--base", help="A Hugging Face model id or local folder instead of the bundled model.")
@click.pass_context
def serve_cmd(ctx: click.Context, port: int | None, host: str | None, base: str | None) -> None:
    """Serve the base with the `zero-shot` and `dialogue` LoRA adapters through vLLM until Ctrl-C."""
    settings = context.settings(ctx)
    if port is not None:
        settings.server.port = port
    if host is not None:
        settings.server.host = host
    check_bind(settings.server.host, what="--host" if host else "server.host")  # the port may hold our own stale server
    _serve(settings, _prepare(settings, base))


@click.command("demo")
@click.option("--base", help="A Hugging Face model id or local folder instead of the bundled model.")
@_auth_option
@click.pass_context
def demo_cmd(ctx: click.Context, base: str | None, auth_file: Path | None) -> None:
    """Everything `make demo` runs: prepare the base, train both adapters on the bundled set (once;
    skipped while data and settings are unchanged), serve both checkpoints with vLLM and the app on
    top of them until Ctrl-C."""
    from limachat.train.data import bundled_examples, split
    from limachat.train.pipeline import run

    settings = context.settings(ctx)
    users = _users(auth_file)
    check_bind(settings.app.host, settings.app.port, "app.host")
    prepared = _prepare(settings, base)
    run(settings, list(VARIANTS), split(bundled_examples()), prepared.model, {}, progress=context.progress)
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
        context.progress(
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
        context.progress(f"{ck.name}: {ck.model} at {ck.base_url} ({ChatClient(ck).status()})")
    app = build_app(context.store(settings), checkpoints, settings, auth=users is not None)
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
            context.progress("stopping the app ...")
        finally:
            app.close()
    return app


@click.command("app")
@click.option("--port", type=PORT, help=f"Port (app.port, default {App().port}).")
@click.option("--host", help="Address to bind (app.host, default 127.0.0.1).")
@_auth_option
@click.pass_context
def app_cmd(ctx: click.Context, port: int | None, host: str | None, auth_file: Path | None) -> None:
    """Only the Gradio app, against endpoints already running (`limachat serve`, or the configured ones)."""
    settings = context.settings(ctx)
    if port is not None:
        settings.app.port = port
    if host is not None:
        settings.app.host = host
    check_bind(settings.app.host, settings.app.port, "--host" if host else "app.host")
    users = _users(auth_file)
    _stop_on_signals()
    _start_app(settings, users, block=True)
    context.progress("stopped")


@click.group("users")
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

    path = path or context.settings(ctx).layout.users
    context.writable(path, "--file")
    import sys

    password = (
        sys.stdin.readline().rstrip("\n")
        if password_stdin
        else click.prompt(f"password for {name}", hide_input=True, confirmation_prompt=True)
    )
    replaced = add_user(path, name, password)
    click.echo(f"{'changed the password of' if replaced else 'added'} {name} in {path}; start with --auth {path}")
