"""The data's way out: every export format as rows, a JSONL file, and a Hub-ready dataset folder.

`--hf-dir DIR` writes DIR/<format>/train-00000-of-00001.parquet, one config per format written (a later
export of another format into the same folder adds its config, the same format replaces its own), a
`limachat.json` with each config's facts, and a README.md dataset card whose YAML header the Hub reads.
`datasets.load_dataset(DIR)` loads the first config written; `load_dataset(DIR, "kto")` names one.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

from limachat.dialogues import export as chains_out
from limachat.dialogues.export import Filters
from limachat.dialogues.formats import dumps
from limachat.dialogues.preference import Tally, check_filters, kto_rows, pairs
from limachat.dialogues.store import LABELS, Store

FORMATS = ("lima", "messages", "sessions", "preference", "kto")
HUB_FORMATS = ("lima", "messages", "preference", "kto")  # a sessions backup is not training data
MANIFEST = "limachat.json"
TASKS = {"lima": "sft", "messages": "sft", "preference": "dpo", "kto": "kto"}


class Output:
    """The rows of one export, and what they add up to, counted as they are drawn."""

    def __init__(self, store: Store, fmt: str, f: Filters, *, dedupe: bool = False, pass_is_good: bool = False):
        if fmt not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        if fmt in ("preference", "kto"):
            check_filters(f, fmt)
        elif dedupe or pass_is_good:
            raise ValueError(f"--{'dedupe' if dedupe else 'pass-is-good'} goes with --format preference or kto")
        self.store, self.fmt, self.f = store, fmt, f
        self.dedupe, self.pass_is_good = dedupe, pass_is_good
        self.tally = Tally(Counter(), Counter())
        self.rows = self.turns = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.fmt == "preference":
            source = pairs(self.store, self.f, dedupe=self.dedupe, tally=self.tally)
        elif self.fmt == "kto":
            source = kto_rows(self.store, self.f, pass_is_good=self.pass_is_good, dedupe=self.dedupe, tally=self.tally)
        elif self.fmt == "sessions":
            from limachat.dialogues.formats import session_records

            source = session_records(self.store)
        else:
            source = (chains_out.training_record(c, self.fmt) for c in self._chains())
        for row in source:
            self.rows += 1
            yield row

    def _chains(self):
        for chain in chains_out.chains(self.store, self.f):
            self.turns += len(chain.labels)
            yield chain

    def summary(self) -> str:
        if self.fmt == "preference":
            return f"{self.rows} pair{'s' if self.rows != 1 else ''}: {self.tally.line()}"
        if self.fmt == "kto":
            left = ", ".join(f"{n} {why}" for why, n in sorted(self.tally.skipped.items()))
            return (
                f"{self.rows} repl{'ies' if self.rows != 1 else 'y'}: {self.tally.pairs['good']} good, {self.tally.pairs['bad']} bad"
                + (f" (left out: {left})" if left else "")
            )
        if self.fmt == "sessions":
            return f"{self.rows} sessions"
        return f"{self.rows} chains, {self.turns} assistant turns"


def write_jsonl(out: Output, path: Path) -> list[dict[str, Any]]:
    """Write the rows to `path` (atomically, through a .partial file); return them."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    rows = []
    with tmp.open("w", encoding="utf-8") as fh:
        for row in out:
            fh.write(dumps(row) + "\n")
            rows.append(row)
    tmp.replace(path)
    return rows


# -- the Hub folder -------------------------------------------------------------------------------------
def _facts(out: Output, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the card says about one config: counts by source, annotators by kind, label shares, filters."""
    kinds = out.store.annotator_kinds()
    people: dict[str, set[str]] = {}
    sessions: set[str] = set()
    for row in rows:
        meta = row.get("limachat") or {}
        sessions.add(meta.get("session"))
        names = meta.get("annotators") or []
        for a in names:
            name, kind = (a["name"], a["kind"]) if isinstance(a, dict) else (a, kinds.get(a, "human"))
            people.setdefault(kind, set()).add(name)
    turn_session = {t["id"]: t["session_id"] for t in out.store.chain_turns()}
    labels = out.store.lowest_labels(out.f.annotator, raters=out.f.raters, human_wins=out.f.human_wins)
    shares = Counter(label for turn, label in labels.items() if turn_session.get(turn) in sessions)
    every = out.store.sessions_where()  # one read, not one per session
    modes = Counter(every[s]["mode"] for s in sessions if s in every)
    sources = dict(out.tally.pairs) if out.fmt in ("preference", "kto") else {}
    return {
        "rows": len(rows),
        "sessions": len(sessions - {None}),
        "modes": dict(sorted(modes.items())),
        "sources": sources,
        "annotators": {kind: len(names) for kind, names in sorted(people.items())},
        "labels": {label: shares[label] for label in LABELS},
        "filters": out.f.args()
        + (["--dedupe"] if out.dedupe else [])
        + (["--pass-is-good"] if out.pass_is_good else []),
        "limachat": version("limachat"),
    }


PARQUET = "train-00000-of-00001.parquet"  # the one file a config's folder holds


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_folder(folder: Path, fmt: str, force: bool) -> None:
    """Refuse a folder that holds anything limachat did not write: a non-empty folder without limachat's
    manifest, a dataset card changed since limachat wrote it, or a file in a config's folder other than its
    Parquet. limachat's own config of the same format is replaced only with `force`."""
    entries = sorted(folder.iterdir()) if folder.is_dir() else []
    if not entries:
        return
    if not (folder / MANIFEST).is_file():
        raise ValueError(
            f"--hf-dir {folder}: holds {entries[0].name}, which limachat did not write; give a new or empty folder"
        )
    manifest = json.loads((folder / MANIFEST).read_text())
    card_path = folder / "README.md"
    if card_path.is_file() and manifest.get("card_sha256") not in (None, _sha256(card_path)):
        raise ValueError(
            f"--hf-dir {folder}: README.md was changed since limachat wrote it; move your edits elsewhere or "
            "give another folder (limachat never overwrites a file it did not write)"
        )
    part = folder / fmt
    if not part.exists():
        return
    foreign = [p for p in sorted(part.rglob("*")) if p.name != PARQUET]
    if fmt not in manifest.get("configs", {}) or foreign:
        name = f"{fmt}/{foreign[0].relative_to(part)}" if foreign else f"{fmt}/"
        raise ValueError(f"--hf-dir {folder}: holds {name}, which limachat did not write; give another folder")
    if not force:
        raise ValueError(f"--hf-dir {folder}: already holds the {fmt} config limachat wrote; --force replaces it")


def write_hub_dir(
    out: Output, rows: list[dict[str, Any]], folder: Path, license: str | None = None, *, force: bool = False
) -> Path:
    """Write this format's Parquet, the manifest and the card into the Hub folder (new, empty, or limachat's
    own, a config of another format added; `force` replaces the same format's). Nothing limachat did not
    write is overwritten or deleted."""
    from datasets import Dataset

    if out.fmt not in HUB_FORMATS:
        raise ValueError(f"--hf-dir takes --format {', '.join(HUB_FORMATS)}; a sessions backup is not a dataset")
    if not rows:
        raise ValueError(f"--hf-dir {folder}: the filters leave no rows to write")
    folder = Path(folder)
    _check_folder(folder, out.fmt, force)
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"configs": {}}
    part = folder / out.fmt
    part.mkdir(exist_ok=True)
    Dataset.from_list(rows).to_parquet(str(part / PARQUET))
    manifest["configs"][out.fmt] = _facts(out, rows)
    if license is not None:
        manifest["license"] = license
    (folder / "README.md").write_text(card(manifest))
    manifest["card_sha256"] = _sha256(folder / "README.md")
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    return folder


def card(manifest: dict[str, Any]) -> str:
    """The dataset card: the YAML header the Hub reads, then what a reader needs to trust the data."""
    from huggingface_hub import DatasetCardData

    configs = manifest["configs"]
    header = DatasetCardData(
        license=manifest.get("license"),
        task_categories=["text-generation"],
        language=None,
        tags=sorted({"limachat", "lima", *(TASKS[c] for c in configs)}),
        configs=[
            {
                "config_name": name,
                "data_files": [{"split": "train", "path": f"{name}/train-*.parquet"}],
                **({"default": True} if i == 0 else {}),
            }
            for i, name in enumerate(configs)
        ],
    )
    lines = [
        "---",
        header.to_yaml(),
        "---",
        "",
        "# Multi-turn dialogue data collected with limachat",
        "",
        "People chatted with language-model checkpoints served by vLLM in limachat's browser app: alone, or",
        "with two checkpoints answering side by side (blind or named). They labelled assistant replies fail,",
        "pass or excellent, picked the better side of a comparison, regenerated replies and wrote gold",
        "corrections. LLM judges (`limachat judge`) may have labelled and compared replies as well; each row",
        "says who decided it, and of what kind, under its `limachat` field.",
        "",
        f"License: {manifest.get('license') or 'not set (limachat export --license)'}.",
        "",
    ]
    for name, facts in configs.items():
        people = ", ".join(f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in facts["annotators"].items()) or "none"
        total = sum(facts["labels"].values())
        shares = ", ".join(
            f"{label} {n} ({n / total:.0%})" if total else f"{label} 0" for label, n in facts["labels"].items()
        )
        lines += [
            f"## `{name}`",
            "",
            f"- rows: {facts['rows']}, from {facts['sessions']} conversation{'s' if facts['sessions'] != 1 else ''} ("
            + ", ".join(f"{n} {mode}" for mode, n in facts["modes"].items())
            + ")",
        ]
        if facts["sources"]:
            lines.append("- by source: " + ", ".join(f"{n} {s}" for s, n in facts["sources"].items()))
        lines += [
            f"- annotators: {people}",
            f"- labels of the rated replies in those conversations: {shares}",
            f"- written by limachat {facts['limachat']} with: `limachat export --format {name}"
            + "".join(f" {a}" for a in facts["filters"])
            + "`",
            "",
        ]
    lines += [
        "Load it with `datasets.load_dataset(PATH_OR_REPO, CONFIG)`; the formats are TRL's (docs/preference.md in",
        "limachat).",
        "",
    ]
    return "\n".join(lines)


def push(folder: Path, repo: str, private: bool = False) -> str:
    """Upload the folder as a dataset repo under the user's own token; ValueError in one line when it cannot."""
    import os

    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if not get_token():
        raise ValueError("--push-to-hub: no Hugging Face token; run `hf auth login` or set HF_TOKEN")
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT"))  # read now, not when huggingface_hub was imported
    try:
        api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="dataset")
    except OfflineModeIsEnabled:
        raise ValueError("--push-to-hub: HF_HUB_OFFLINE is set; unset it to upload") from None
    except HfHubHTTPError as e:
        raise ValueError(f"--push-to-hub {repo}: the Hub refused: {str(e).splitlines()[0]}") from None
    except (OSError, httpx2.HTTPError) as e:  # connection refused, no DNS, timeouts
        raise ValueError(f"--push-to-hub {repo}: cannot reach the Hub ({type(e).__name__})") from None
    return str(getattr(info, "commit_url", repo))
