"""Collect and Report tab handlers: filtered counts, exports, training a new dialogue checkpoint in
a background process and serving it, and the Figure 7 report."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from limachat.demo.answer import Deps
from limachat.dialogues import report as reports
from limachat.dialogues.export import Filters, chains, export
from limachat.serve.checkpoints import Checkpoint

ANY = "any"


def filters(min_label: str = ANY, cut_at_first_fail: bool = False, prefer_gold: bool = False, checkpoint: str = ANY,
            annotator: str = "", mode: str = ANY) -> Filters:
    """The export filters from the tab's widgets ("any" and blank mean no filter)."""
    def opt(v):
        return None if v in (None, "", ANY) else v.strip()
    return Filters(min_label=opt(min_label), cut_at_first_fail=bool(cut_at_first_fail), prefer_gold=bool(prefer_gold),
                   checkpoint=opt(checkpoint), annotator=opt(annotator), mode=opt(mode))


def count(deps: Deps, f: Filters) -> str:
    n_chains = n_turns = 0
    for chain in chains(deps.store, f):
        n_chains += 1
        n_turns += len(chain.labels)
    return f"**{n_chains}** chains, **{n_turns}** assistant turns pass these filters."


def export_file(deps: Deps, f: Filters, fmt: str) -> tuple[Path, str]:
    """Write the filtered chains as LIMA or messages JSONL under <home>/exports/."""
    out = deps.settings.home / "exports" / f"limachat-{fmt}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    n_chains, n_turns = export(deps.store, out, fmt, f)
    return out, f"Wrote {n_chains} chains ({n_turns} assistant turns) to `{out}`."


def _cli_filters(f: Filters) -> list[str]:
    args = []
    for key in ("min_label", "checkpoint", "annotator", "mode", "since", "until", "raters", "min_score", "selection", "gold_from"):
        if getattr(f, key) is not None:
            args += [f"--{key.replace('_', '-')}", str(getattr(f, key))]
    args += ["--cut-at-first-fail"] * f.cut_at_first_fail + ["--prefer-gold"] * f.prefer_gold + ["--human-wins"] * f.human_wins
    return args + (["--min-turns", str(f.min_turns)] if f.min_turns != 1 else [])


@dataclass
class TrainJob:
    """`limachat train --variant dialogue --from-db --bundled` in its own process, logging to a file."""

    name: str
    log: Path
    proc: subprocess.Popen
    started: float = field(default_factory=time.monotonic)

    def progress(self) -> tuple[str, int | None]:
        """("<state> (<seconds>): <the log's last line>", percent of the current progress bar)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            text = ""
        lines = [ln.strip() for ln in re.split(r"[\r\n]+", text) if ln.strip()]
        last = lines[-1] if lines else "starting ..."
        pct = re.findall(r"(\d+)%\|", last)
        return f"{self.state} ({time.monotonic() - self.started:.0f} s): {last}", int(pct[-1]) if pct else None

    @property
    def state(self) -> str:
        code = self.proc.poll()
        return "running" if code is None else ("done" if code == 0 else "failed")


def start_training(deps: Deps, f: Filters, name: str | None = None, extra: tuple[str, ...] = ()) -> TrainJob:
    """Train a new dialogue checkpoint from the bundled set plus the chains these filters pass
    (`extra`: more `limachat train` options)."""
    job = deps.jobs.get("train")
    if job is not None and job.state == "running":
        raise ValueError("A training run is already going; wait for it to finish.")
    if not any(True for _ in chains(deps.store, f)):
        raise ValueError("No chains pass these filters: rate some turns, or loosen the filters, first.")
    name = name or f"dialogue-{time.strftime('%Y%m%d-%H%M%S')}"
    home = deps.settings.home
    log = home / "logs" / f"train-{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "limachat.cli", "--home", str(home), "train", "--variant", "dialogue", "--name", name,
           "--bundled", "--from-db", *_cli_filters(f), *extra]
    if deps.settings.server.base:
        cmd += ["--base", deps.settings.server.base]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", "LIMACHAT_DB": str(deps.store.path.resolve())}, start_new_session=True)
    job = deps.jobs["train"] = TrainJob(name, log, proc)
    return job


def serve_trained(deps: Deps, job: TrainJob) -> str:
    """Load the trained adapter into the running local vLLM server and offer it as a checkpoint."""
    if job.state != "done":
        raise ValueError(f"The training run is {job.state}; there is nothing to serve yet.")
    from limachat.serve.server import load_adapter

    base_url = deps.settings.local_base_url
    load_adapter(base_url, job.name, deps.settings.home / "checkpoints" / job.name)
    deps.add_checkpoint(Checkpoint(name=job.name, model=job.name, base_url=base_url))
    return f"Serving **{job.name}**: pick it in Chat or Compare (e.g. against zero-shot)."


def report(deps: Deps) -> tuple[Path | None, str]:
    """The Figure 7 chart (a PNG under <home>/reports/) and the tables of `limachat report`."""
    doc = reports.document(deps.store)
    heldout = reports.heldout(deps.settings.home)
    if not doc.rated:
        return None, "No rated turns yet: rate some replies in Chat or Compare.\n\n" + reports.render(doc, heldout)
    png = deps.settings.home / "reports" / "figure7.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    reports.figure7(doc.reports, png)
    return png, reports.render(doc, heldout)
