"""Long work (judge, select, revise, ablate, train) shows a progress bar, and its progress is data.

A job started by the app runs a `limachat` command in its own process with LIMACHAT_PROGRESS set to a
JSON file. `Progress` draws the terminal's bar and, when that variable is set, rewrites the file
(atomically, at most a few times a second) with what the page shows: stage, done, total, unit,
message, state. The app reads that record; it never scrapes a log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from limachat.layout import Home

ENV = "LIMACHAT_PROGRESS"


class Progress:
    """`with Progress("judging", total=n, unit="turn") as p: p.update(1)`; `p.stage(...)` starts the next bar."""

    def __init__(self, stage: str, total: int | None = None, unit: str = "it", path: str | Path | None = None):
        self.path = Path(path or os.environ.get(ENV) or "") if (path or os.environ.get(ENV)) else None
        self._bar = None
        self._written = 0.0
        self.record: dict[str, Any] = {"state": "running", "started": time.time(), "message": ""}
        self.stage(stage, total, unit)

    def stage(self, stage: str, total: int | None = None, unit: str = "it") -> None:
        from tqdm import tqdm

        if self._bar is not None:
            self._bar.close()
        self._bar = tqdm(total=total, desc=stage, unit=unit, dynamic_ncols=True, file=sys.stderr)
        self.record.update(stage=stage, done=0, total=total, unit=unit)
        self._write(force=True)

    def update(self, n: int = 1, **postfix: Any) -> None:
        self._bar.update(n)
        if postfix:
            self._bar.set_postfix(postfix)
            self.record["postfix"] = postfix
        self.record["done"] += n
        self._write()

    def message(self, text: str) -> None:
        """A line for the user (printed above the bar, and the record's `message`)."""
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)
        self.record["message"] = text
        self._write(force=True)

    def finish(self, state: str = "done", message: str | None = None) -> None:
        if self._bar is not None:
            self._bar.close()
        self.record["state"] = state
        if message is not None:
            self.record["message"] = message
        self._write(force=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind, error, tb) -> None:
        if self.record["state"] == "running":
            self.finish("done" if kind is None else "failed", None if kind is None else f"{kind.__name__}: {error}")

    def _write(self, force: bool = False) -> None:
        now = time.time()
        if self.path is None or (not force and now - self._written < 0.25):
            return
        self._written = now
        self.record["updated"] = now
        tmp = self.path.with_name(self.path.name + ".partial")
        tmp.write_text(json.dumps(self.record))
        tmp.replace(self.path)


def read_progress(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


@dataclass
class Job:
    """A `limachat` command in its own process: its log and its progress record under <home>/jobs/."""

    kind: str  # judge | select | revise | ablate | train
    name: str
    proc: subprocess.Popen
    log: Path
    progress_path: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def state(self) -> str:
        code = self.proc.poll()
        return "running" if code is None else ("done" if code == 0 else "failed")

    def progress(self) -> dict[str, Any]:
        """The job's own record, with the process's state (a killed process writes nothing more)."""
        return {**read_progress(self.progress_path), "state": self.state, "seconds": time.monotonic() - self.started}

    def error(self) -> str:
        """The one line the command ended with, when it failed."""
        try:
            lines = [ln for ln in self.log.read_text(errors="replace").splitlines() if ln.startswith("Error:")]
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def summary(self) -> str:
        p = self.progress()
        done, total = p.get("done", 0), p.get("total")
        count = f"{done}/{total} {p.get('unit', '')}" if total else f"{done} {p.get('unit', '')}"
        line = f"**{self.kind} {self.name}**: {p['state']} ({p['seconds']:.0f} s) - {p.get('stage', 'starting')}: {count.strip()}"
        extra = p.get("message") or ""
        if p["state"] == "failed":
            extra = self.error() or extra
        return line + (f"\n\n{extra}" if extra else "")

    def fraction(self) -> float | None:
        p = self.progress()
        return p["done"] / p["total"] if p.get("total") else None


def start(home: Path, kind: str, name: str, args: list[str], env: dict[str, str] | None = None) -> Job:
    """Run `limachat --home HOME ARGS` in the background, its progress written to <home>/jobs/NAME.json."""
    folder = Home(Path(home)).jobs
    folder.mkdir(parents=True, exist_ok=True)
    log, progress = folder / f"{name}.log", folder / f"{name}.json"
    progress.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "limachat.cli", "--home", str(home), *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", ENV: str(progress), **(env or {})},
        )
    return Job(kind, name, proc, log, progress)
