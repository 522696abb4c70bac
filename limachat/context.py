"""What every command gets from the `limachat` group: its settings, its store, a progress line.

The CLI (limachat/cli.py) assembles the commands; the command modules take their settings and store
from here and never import the CLI back."""

from __future__ import annotations

from pathlib import Path

import click

from limachat.settings import Settings


def settings(ctx: click.Context) -> Settings:
    """The settings the `limachat` group resolved (flags, environment, limachat.toml, defaults)."""
    return ctx.find_root().obj["settings"]


def store(settings: Settings):
    """The session store under the settings' home."""
    from limachat.dialogues.store import Store

    return Store(settings.db_path, busy_timeout_ms=int(settings.db_busy_timeout * 1000))


def progress(message: str) -> None:
    """A line of progress for the person at the terminal (stderr, so stdout stays the result)."""
    click.echo(message, err=True)


def writable(path: Path, option: str) -> None:
    """An output file's folder must exist (and the path must not be a folder): checked before any work."""
    if path.is_dir():
        raise click.ClickException(f"{option} {path}: is a folder; give a file name")
    if not path.parent.is_dir():
        raise click.ClickException(f"{option} {path}: the folder {path.parent} does not exist")
