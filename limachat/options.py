"""Command-line options shared by several commands."""

from dataclasses import MISSING, fields

import click

from limachat.dialogues.export import Filters


def _option(f) -> click.Option:
    """A click option from a Filters field: its flag, type, default and help come from the field."""
    flag, meta = "--" + f.name.replace("_", "-"), f.metadata
    if f.default is False:
        return click.option(flag, is_flag=True, help=meta["help"])
    kind = {"int": click.IntRange, "float": click.FloatRange}.get(f.type.split(" ")[0]) if meta["bounds"] else None
    kind = kind(*meta["bounds"]) if kind else click.Choice(meta["choices"]) if meta["choices"] else None
    default = None if f.default is MISSING else f.default
    return click.option(flag, type=kind, default=default, show_default=default is not None, help=meta["help"])


def filter_options(command=None, *, only: tuple[str, ...] | None = None):
    """The export filters (every field of `Filters`, or those named in `only`), shared by `export`,
    `train --from-db` and the curation commands."""

    def wrap(command):
        for f in reversed(fields(Filters)):
            if only is None or f.name in only:
                command = _option(f)(command)
        return command

    return wrap(command) if command is not None else wrap
