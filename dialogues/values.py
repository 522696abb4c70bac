"""The values the store knows: enumerations, the error it raises, how JSON columns are kept.
(`limachat.dialogues.store` re-exports all of them.)"""

from __future__ import annotations

import json
import secrets
import time
from datetime import datetime, timezone
from typing import Any

MODES = ("chat", "compare", "blind", "imported", "bench")  # bench: a benchmark answer (limachat bench)
ROLES = ("user", "assistant")
LANES = ("a", "b")
LABELS = ("fail", "pass", "excellent")
COLORS = {"fail": "#d9534f", "pass": "#f0ad4e", "excellent": "#5cb85c"}  # each label's colour in every chart
RANK = {label: i for i, label in enumerate(LABELS)}  # a turn rated by several annotators takes the lowest
STATUSES = ("streaming", "ok", "error", "stopped")
VERDICTS = ("a", "b", "tie")  # a person's
JUDGE_VERDICTS = (*VERDICTS, "inconsistent")  # a judge's: its two verdicts, sides swapped, disagreed
KINDS = ("human", "judge", "teacher", "adjudicator")  # who an annotator is
ADJUDICATOR = "adjudicator/"  # + a reviewer's name: the annotator their final labels are stored under
# whose ratings a report or a filter takes; `adjudicated`: people's, an adjudicator's final label winning
RATERS = ("humans", "judges", "all", "adjudicated")
PURPOSES = ("rate", "adjudicate")  # what a queue's annotators do
QUEUE_SOURCES = ("study", "filter", "disagree", "judge-disagrees", "one-rater")  # where a queue's replies come from
JUDGE_MODES = ("label", "score", "pairwise")
BENCH_MODES = ("single", "pairwise")  # MT-Bench's protocols: a 1-10 grade per reply, or two answers compared
# A pairwise game's outcome in FastChat's words; "error": the judge's output held no verdict
GAME_WINNERS = ("model_1", "model_2", "tie", "error")
GOLD_SOURCES = ("humans", "teachers", "both")  # whose gold edits training takes
JSON_COLUMNS = {"params", "meta", "omitted"}
REFERENCE = "reference"  # the checkpoint of a scripted reference reply (no model wrote it)
RANKER = "oasst-ranking"  # the annotator OpenAssistant's sibling ranks are imported under (a human's)
INTERRUPTED = "interrupted: the app stopped while this reply was streaming"


class StoreError(ValueError):
    """A request the store refuses (unknown id, bad label, a locked or foreign file): one line saying what."""


def new_id() -> str:
    """Time-ordered (sorts by creation) and random (merges across machines): 26 hex characters."""
    return f"{time.time_ns():016x}{secrets.token_hex(5)}"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def to_json(key: str, value: Any) -> Any:
    """JSON columns are stored with sorted keys, so an export re-imported exports byte for byte."""
    return (
        json.dumps(value, sort_keys=True)
        if key in JSON_COLUMNS and value is not None and not isinstance(value, str)
        else value
    )


def _row(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {k: (json.loads(v) if k in JSON_COLUMNS and v is not None else v) for k, v in row.items()}


def check_text(text: str, what: str) -> str:
    """Text a database and a terminal can hold: UTF-8 encodable (no lone surrogates), and no control
    characters but tab, newline and carriage return (a NUL ends C strings; ESC drives terminals)."""
    for i, ch in enumerate(text):
        code = ord(ch)
        if (code < 32 and ch not in "\t\n\r") or code == 127 or 0xD800 <= code <= 0xDFFF:
            kind = "a lone surrogate" if code >= 0xD800 else f"the control character U+{code:04X}"
            raise ValueError(f"{what} holds {kind} at character {i + 1}")
    return text


def _check(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise StoreError(f"{what} must be one of {', '.join(allowed)}, not {value!r}")
    return value


# The enumerated columns, checked before a row is written (and by the schema's CHECK constraints).
ENUMS = {
    "sessions": {"mode": MODES},
    "turns": {"role": ROLES, "status": STATUSES, "lane": LANES},
    "ratings": {"label": LABELS},
    "verdicts": {"verdict": JUDGE_VERDICTS},
    "edits": {"review": ("accepted", "rejected")},
    "annotators": {"kind": KINDS},
    "queues": {"purpose": PURPOSES},
    "conversation_verdicts": {"verdict": VERDICTS},
    "bench_judgments": {"mode": BENCH_MODES},
}


def pct(x: float | None) -> str:
    """A share as the reports print it: 12.5%, or n/a."""
    return "n/a" if x is None else f"{100 * x:.1f}%"


def num(x: float | None) -> str:
    """A figure as the reports print it: 0.69, or n/a."""
    return "n/a" if x is None else f"{x:.2f}"
