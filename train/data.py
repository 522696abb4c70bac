"""Training examples from files, the bundled set or the store, split into LIMA's two variants.

zero-shot: the single-turn examples only; dialogue: the same plus the multi-turn chains (in the
paper 1,000 + 30 = 1,030). A file in any import format works; a LIMA record whose source is
`multi_turn`, or any conversation of more than one exchange, counts as a chain.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from limachat.dialogues import bundled
from limachat.dialogues.formats import FormatError, conversation_pairs, detect_format, jsonl_records
from limachat.layout import DIALOGUE, ZERO_SHOT

IGNORE = -100  # label of a token the loss skips


@dataclass(frozen=True)
class Example:
    messages: tuple[tuple[str, str], ...]  # (role, content), system first if any
    multi_turn: bool
    origin: str  # "file:line" or "db:session"

    def as_messages(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]


def read_file(path: Path, fmt: str | None = None) -> list[Example]:
    """Every conversation in a JSONL file of any import format; a bad line is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such file")
    out = []
    for number, record, problem in jsonl_records(path):
        where = f"{path}:{number}"
        if problem:
            raise FormatError(f"{where}: {problem}")
        line_fmt = fmt or detect_format(record)
        if line_fmt in (None, "sessions"):
            raise FormatError(
                f"{where}: training reads lima, messages or sharegpt lines (export sessions with --format messages)"
            )
        try:
            pairs, meta = conversation_pairs(record, line_fmt)
        except ValueError as e:
            raise FormatError(f"{where}: {e}") from None
        while pairs and pairs[-1][0] == "user":
            pairs = pairs[:-1]  # nothing to learn from an unanswered question
        if not pairs:
            continue
        system = (("system", meta["system"]),) if meta.get("system") else ()
        exchanges = len(pairs) // 2
        out.append(Example(system + tuple(pairs), meta.get("source") == "multi_turn" or exchanges > 1, where))
    return out


def from_chains(chains: Iterable[Any]) -> list[Example]:
    """Chains exported from the store (limachat.dialogues.export.chains)."""
    return [
        Example(tuple((m["role"], m["content"]) for m in c.messages()), len(c.labels) > 1, f"db:{c.session['id']}")
        for c in chains
    ]


@dataclass
class Split:
    single: list[Example] = field(default_factory=list)
    chains: list[Example] = field(default_factory=list)

    def variant(self, name: str) -> list[Example]:
        if name == ZERO_SHOT:
            return list(self.single)
        if name == DIALOGUE:
            return self.single + self.chains
        raise ValueError(f"--variant must be {ZERO_SHOT}, {DIALOGUE} or both, not {name!r}")


def split(examples: Iterable[Example]) -> Split:
    """Separate single-turn examples from multi-turn chains; identical examples once only."""
    s, seen = Split(), set()
    for ex in examples:
        if ex.messages in seen:
            continue
        seen.add(ex.messages)
        (s.chains if ex.multi_turn else s.single).append(ex)
    return s


def bundled_examples() -> list[Example]:
    return read_file(bundled("train.jsonl"))


def heldout_examples() -> list[Example]:
    """Two of the project's multi-turn chains, never trained on: every checkpoint is scored on them."""
    return read_file(bundled("heldout.jsonl"))


def data_hash(examples: list[Example]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(ex.messages, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


# -- tokenization with loss masks --------------------------------------------------------------------


def tokenize(example: Example, tokenizer, max_length: int, first_exchange: int = 1) -> dict[str, Any]:
    """input_ids with labels on every assistant turn's tokens (its end-of-turn marker included)
    from the `first_exchange`-th reply on, and IGNORE elsewhere. Each boundary is found by rendering the chat template on a prefix of the
    conversation, so any template works. `trimmed` says the example was cut at max_length."""
    messages = example.as_messages()
    ids: list[int] = []
    labels: list[int] = []
    exchange = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        exchange += 1
        prompt = _render(tokenizer, messages[:i], generation_prompt=True)
        full = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if full[: len(prompt)] != prompt or prompt[: len(ids)] != ids:
            raise ValueError(
                f"{example.origin}: the chat template does not render conversations as prefixes of each other"
            )
        reply = full[len(prompt) :] if exchange >= first_exchange else [IGNORE] * (len(full) - len(prompt))
        labels += [IGNORE] * (len(prompt) - len(ids)) + reply
        ids = full
    trimmed = len(ids) > max_length
    return {"input_ids": ids[:max_length], "labels": labels[:max_length], "trimmed": trimmed, "tokens": len(ids)}


def _render(tokenizer, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
    return list(out["input_ids"] if hasattr(out, "keys") else out)
