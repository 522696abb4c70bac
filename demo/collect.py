"""Collect and Report tab handlers: filtered counts, exports, training a new dialogue checkpoint in
a background process and serving it, and the Figure 7 report."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from limachat import jobs
from limachat.demo.answer import Deps
from limachat.dialogues import report as reports
from limachat.dialogues.dataset import MANIFEST, Output, write_hub_dir, write_jsonl
from limachat.dialogues.export import Filters, chains, export
from limachat.dialogues.preference import CHAIN_ONLY
from limachat.jobs import Job
from limachat.layout import DIALOGUE
from limachat.settings import settings_env

ANY = "any"


def filters(
    min_label: str = ANY,
    cut_at_first_fail: bool = False,
    prefer_gold: bool = False,
    checkpoint: str = ANY,
    annotator: str = "",
    mode: str = ANY,
    raters: str = "",
    min_score: float | None = None,
    selection: str = ANY,
    gold_from: str = "",
) -> Filters:
    """The export filters from the tab's widgets ("any", blank and 0 mean no filter, or the filter's own
    default)."""
    given = {
        "min_label": min_label,
        "cut_at_first_fail": bool(cut_at_first_fail),
        "prefer_gold": bool(prefer_gold),
        "checkpoint": checkpoint,
        "annotator": annotator,
        "mode": mode,
        "raters": raters,
        "min_score": min_score or None,
        "selection": selection,
        "gold_from": gold_from,
    }
    return Filters(**{k: v.strip() if isinstance(v, str) else v for k, v in given.items() if v not in (None, "", ANY)})


PAIR_FORMATS = ("preference", "kto")


def for_format(f: Filters, fmt: str) -> Filters:
    """The filters a format takes: pairs and labelled replies leave the chain-shaping ones at their defaults."""
    if fmt not in PAIR_FORMATS:
        return f
    return dataclasses.replace(f, **{name: Filters.__dataclass_fields__[name].default for name in CHAIN_ONLY})


def count(deps: Deps, f: Filters, pass_is_good: bool = False) -> str:
    """What each format would write under these filters: chains, pairs by source, KTO replies."""
    n_chains = n_turns = 0
    for chain in chains(deps.store, f):
        n_chains += 1
        n_turns += len(chain.labels)
    pairs = Output(deps.store, "preference", for_format(f, "preference"))
    n_pairs = sum(1 for _ in pairs)
    kto = Output(deps.store, "kto", for_format(f, "kto"), pass_is_good=pass_is_good)
    n_kto = sum(1 for _ in kto)
    return (
        f"**{n_chains}** chains, **{n_turns}** assistant turns pass these filters.  \n"
        f"**{n_pairs}** preference pair{'s' if n_pairs != 1 else ''}: {pairs.tally.line()}.  \n"
        f"**{n_kto}** KTO replies: {kto.tally.pairs['good']} good, {kto.tally.pairs['bad']} bad"
        + ("" if pass_is_good else ' (pass replies left out; tick "Pass is good" to count them good)')
        + ".  \n_Pairs and KTO replies take the checkpoint, annotator, mode, raters and selection filters; "
        "min label, cut at first fail, gold corrections and min score shape chains only._"
    )


def _output(deps: Deps, f: Filters, fmt: str, pass_is_good: bool, dedupe: bool) -> Output:
    if fmt in PAIR_FORMATS:
        return Output(deps.store, fmt, for_format(f, fmt), dedupe=dedupe, pass_is_good=pass_is_good and fmt == "kto")
    return Output(deps.store, fmt, f)


def export_file(deps: Deps, f: Filters, fmt: str, pass_is_good: bool = False, dedupe: bool = False) -> tuple[Path, str]:
    """Write the filtered data (chains, pairs or KTO replies) as JSONL under <home>/exports/."""
    out = deps.settings.layout.exports / f"limachat-{fmt}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    output = _output(deps, f, fmt, pass_is_good, dedupe)
    write_jsonl(output, out)
    return out, f"Wrote {output.summary()} to `{out}`."


def hub_folder(
    deps: Deps, f: Filters, fmt: str, pass_is_good: bool = False, dedupe: bool = False, license: str = ""
) -> tuple[Path, str]:
    """Write (or add this format's config to) the Hub-ready folder <home>/exports/hub."""
    folder = deps.settings.layout.exports / "hub"
    folder.parent.mkdir(parents=True, exist_ok=True)
    output = _output(deps, f, fmt, pass_is_good, dedupe)
    write_hub_dir(output, list(output), folder, license.strip() or None, force=True)  # the app's own folder
    configs = ", ".join(json.loads((folder / MANIFEST).read_text())["configs"])
    return folder, (
        f"Wrote {output.summary()} as the `{fmt}` config of `{folder}` (configs: {configs}); "
        f"`datasets.load_dataset('{folder}', '{fmt}')` loads it, `limachat export --push-to-hub` uploads it."
    )


def _job(deps: Deps, kind: str, name: str, args: list[str]) -> Job:
    """Start `limachat ARGS` in the background with the app's own settings; one job of a kind at a time."""
    running = deps.jobs.get(kind)
    if running is not None and running.state == "running":
        raise ValueError(f"A {kind} job ({running.name}) is still running; wait for it to finish.")
    env = {**settings_env(deps.settings), "LIMACHAT_DB": str(deps.store.path.resolve())}
    job = deps.jobs[kind] = jobs.start(deps.settings.home, kind, name, args, env)
    return job


def start_training(deps: Deps, f: Filters, name: str | None = None, extra: tuple[str, ...] = ()) -> Job:
    """Train a new dialogue checkpoint from the bundled set plus the chains these filters pass
    (`extra`: more `limachat train` options)."""
    if not any(True for _ in chains(deps.store, f)):
        raise ValueError("No chains pass these filters: rate some turns, or loosen the filters, first.")
    name = name or f"dialogue-{time.strftime('%Y%m%d-%H%M%S')}"
    args = ["train", "--variant", DIALOGUE, "--name", name, "--bundled", "--from-db", *f.args(), *extra]
    if deps.settings.server.base:
        args += ["--base", deps.settings.server.base]
    return _job(deps, "train", name, args)


def _session_filters(f: Filters) -> list[str]:
    """The flags of the filters that pick sessions and turns (what a judge or a teacher reads)."""
    return Filters(checkpoint=f.checkpoint, annotator=f.annotator, mode=f.mode).args()


def start_judge(deps: Deps, mode: str, f: Filters, limit: int | None) -> Job:
    """`limachat judge MODE` over the turns the filters' checkpoint, annotator and mode pick."""
    args = ["judge", mode, *_session_filters(f), *(["--limit", str(int(limit))] if limit else [])]
    return _job(deps, "judge", f"judge-{mode}-{time.strftime('%Y%m%d-%H%M%S')}", args)


def start_select(deps: Deps, f: Filters, name: str, size: int | None, per_cluster: bool) -> Job:
    """`limachat select` over the chains the filters pass, saved as selection NAME."""
    name = (name or "").strip()
    if not name or not size:
        raise ValueError("Give the selection a name and a size.")
    args = [
        "select",
        "--name",
        name,
        "--size",
        str(int(size)),
        "--replace",
        *f.args(),
        *(["--per-cluster"] * per_cluster),
    ]
    return _job(deps, "select", f"select-{name}", args)


def start_revise(deps: Deps, f: Filters, labels: list[str], limit: int | None) -> Job:
    """`limachat revise` on the turns labelled `labels` (by people or judges) the filters pick."""
    if not labels:
        raise ValueError("Pick the labels of the turns to revise (fail, pass).")
    args = [
        "revise",
        "--labels",
        ",".join(labels),
        *_session_filters(f),
        *(["--selection", f.selection] if f.selection else []),
        *(["--limit", str(int(limit))] if limit else []),
    ]
    return _job(deps, "revise", f"revise-{time.strftime('%Y%m%d-%H%M%S')}", args)


def start_ablate(deps: Deps, f: Filters, name: str, by: str, design: str) -> Job:
    """`limachat ablate` on the chains these filters pass, exported under <home>/jobs/ first."""
    name = (name or "").strip()
    if not name:
        raise ValueError("Give the ablation a name: its checkpoints are NAME-all, NAME-without-GROUP ...")
    folder = deps.settings.layout.jobs
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ablate-{name}.jsonl"
    n, _ = export(deps.store, path, "messages", f)
    if not n:
        raise ValueError("No chains pass these filters: rate some turns, or loosen the filters, first.")
    return _job(deps, "ablate", f"ablate-{name}", ["ablate", str(path), "--name", name, "--by", by, "--design", design])


def job_status(deps: Deps) -> str:
    """A block per job this app started: what it does, its bar, and how it ended."""
    out = []
    for job in deps.jobs.values():
        pct = job.fraction()
        bar = f"`[{'#' * int(20 * pct)}{'.' * (20 - int(20 * pct))}] {100 * pct:.0f}%` " if pct is not None else ""
        out.append(bar + job.summary())
    return "\n\n".join(out)


def running(deps: Deps) -> bool:
    return any(job.state == "running" for job in deps.jobs.values())


def serve_trained(deps: Deps, job: Job) -> str:
    """Load the trained adapter into the running local vLLM server and offer it as a checkpoint."""
    if job.state != "done":
        raise ValueError(f"The training run is {job.state}; there is nothing to serve yet.")
    from limachat.serve.server import load_adapter

    settings = deps.settings
    load_adapter(settings.local_base_url, job.name, settings.layout.checkpoint(job.name), settings.layout.api_key())
    deps.add_checkpoint(settings.local(job.name))
    return f"Serving **{job.name}**: pick it in Chat or Compare (e.g. against zero-shot)."


def report(deps: Deps) -> tuple[Path | None, str]:
    """The Figure 7 chart (a PNG under <home>/reports/) and the tables of `limachat report`."""
    doc = reports.document(deps.store)
    heldout = reports.heldout(deps.settings.home)
    if not doc.rated:
        return None, "No rated turns yet: rate some replies in Chat or Compare.\n\n" + reports.render(doc, heldout)
    png = deps.settings.layout.reports / "figure7.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    reports.figure7(doc.reports, png)
    return png, reports.render(doc, heldout)


def selections(deps: Deps) -> list[str]:
    return [s["name"] for s in deps.store.selections()]


def rubric_text(deps: Deps, category: str | None) -> str:
    return deps.store.rubrics().get(category or "", {}).get("content", "")


def save_rubric(deps: Deps, category: str | None, text: str, annotator: str | None) -> str:
    """A person's edit of a category's rubric: its next version (the teacher's stays in history)."""
    from limachat.demo.history import NAME_FIRST

    if not annotator:
        raise ValueError(NAME_FIRST)
    if not category:
        raise ValueError("Pick a category first (`limachat revise` writes the first rubrics).")
    deps.store.set_rubric(category, text, annotator)
    return f"Saved a new version of the rubric for **{category}**."


def pending_revisions(deps: Deps) -> list[tuple[str, str]]:
    """(label, edit id) of the teacher revisions nobody has reviewed yet."""
    return [
        (f"{e['category'] or 'no rubric'} · {e['original'][:70]!r}", e["id"])
        for e in deps.store.teacher_edits(pending=True)
    ]


def revision(deps: Deps, edit_id: str | None) -> tuple[str, str]:
    """The reply as it was and as the teacher revised it, each under its heading."""
    e = next((e for e in deps.store.teacher_edits() if e["id"] == edit_id), None)
    if e is None:
        return "", ""
    return (
        f"**Original** ({e['category'] or 'no rubric'})\n\n{e['original']}",
        f"**Revised by {e['annotator']}**\n\n{e['content']}",
    )


def review(deps: Deps, edit_id: str | None, annotator: str | None, accept: bool) -> str:
    from limachat.demo.history import NAME_FIRST

    if not annotator:
        raise ValueError(NAME_FIRST)
    if not edit_id:
        raise ValueError("Pick a revision first.")
    deps.store.review_edit(edit_id, annotator, accept)
    return (
        "Accepted: it is now your gold correction of that reply."
        if accept
        else "Rejected: it will not be used as gold."
    )
