"""Where unexpected errors go: `<home>/logs/limachat.log`, with their traceback. The user sees one
line that names the error and points to that file."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from limachat.layout import Home

log = logging.getLogger("limachat")
log.addHandler(logging.NullHandler())  # without a home to log to, nothing is printed in the user's way
log.propagate = False
_path: Path | None = None
_handler: logging.Handler | None = None


def setup(home: Path) -> Path:
    """Log limachat's warnings and errors to <home>/logs/limachat.log (one file at a time per process: a
    second home replaces the first)."""
    global _path, _handler
    path = Home(Path(home)).logs / "limachat.log"
    if not os.access(Path(home) if Path(home).is_dir() else Path(home).parent, os.W_OK):
        # a home on a read-only disk can still be read (report, export elsewhere): log beside the temp files
        path = Path(tempfile.gettempdir()) / f"limachat-{os.getuid()}.log"
    if _path != path:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        if _handler is not None:
            log.removeHandler(_handler)
            _handler.close()
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        _path, _handler = path, handler
    return path


def internal(error: BaseException, where: str) -> str:
    """Log `error` with its traceback; return the one line to show instead."""
    if _path is not None:
        log.error("internal error in %s", where, exc_info=error)
    pointer = f"its traceback is in {_path}" if _path else "run with a home directory to keep its traceback"
    return f"internal error in {where} ({type(error).__name__}: {str(error)[:200]}); {pointer}"
