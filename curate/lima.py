"""LIMA's own data recipe (Zhou et al., 2023, section 2.1), as named steps over question-and-answer data.

LIMA drew most of its 1,000 examples from community Q&A sites by rules rather than by a model: sample
questions across communities for diversity, take each question's top-voted answer, keep answers of a
certain length (1,200 to 4,096 characters), drop answers written in the first person or pointing at
other answers or the site, strip the markup but keep code and lists, and use either the question's
title or its body as the prompt. Each rule here is a step with its setting; `run` says how many items
each step removed. `limachat filter --recipe lima` imports what is left as chains and names them as a
selection, as `limachat select` does, so `export` and `train` take it.

Input lines (JSON Lines): a question with its answers, as a Q&A site dump gives them,
    {"id": "...", "community": "cooking", "title": "...", "body": "<p>...</p>",
     "answers": [{"body": "<p>...</p>", "score": 12}, ...]}
("category" may stand for "community", "text" for "body", an answer may be a plain string, and votes
are optional: without them the first answer counts as the top one); or any conversation format
`limachat import` reads (docs/data-formats.md), taken as one question with one answer, its "source"
as its community.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from limachat.dialogues.formats import FormatError, chain_pairs, jsonl_records

RECIPE = "lima"


@dataclass(frozen=True)
class Settings:
    min_chars: int = 1200  # LIMA's window, in characters of the cleaned answer
    max_chars: int = 4096
    per_category: int | None = None  # the most items kept per community (None: all)
    seed: int = 0  # the per-category sample and the title-or-body draw
    references: tuple[str, ...] = (
        r"\b(other|another|previous|above|below|accepted|top|my (other|earlier)) (answers?|posts?|replies|comments?)\b",
        r"\b(as|like) (mentioned|said|stated|noted|suggested) (above|below|before|earlier|by)\b",
        r"\b(stack ?exchange|stack ?overflow|this (site|forum|thread|community))\b",
        r"\b(up-?vot\w*|down-?vot\w*)\b",
        r"^\s*(edit|update)\s*:",
    )


@dataclass
class Item:
    """One question and its candidate answers, as read; `answer` and `prompt` as the steps left them."""

    id: str
    category: str
    title: str
    body: str
    answers: list[tuple[str, float | None]]  # (text, score)
    where: str  # FILE:LINE
    exchanges: int = 1  # a conversation read as a question: how many exchanges it has
    answer: str = ""
    score: float | None = None
    prompt: str = ""
    prompt_from: str = ""


@dataclass(frozen=True)
class Step:
    name: str
    setting: str
    before: int
    removed: int
    note: str = ""

    @property
    def left(self) -> int:
        return self.before - self.removed


@dataclass
class Result:
    items: list[Item]
    steps: list[Step] = field(default_factory=list)

    def table(self) -> str:
        w = max(len(s.setting) for s in self.steps)
        rows = [f"{'step':<13} {'setting':<{w}} {'in':>6} {'removed':>8} {'left':>6}"]
        for s in self.steps:
            note = f"  ({s.note})" if s.note else ""
            rows.append(f"{s.name:<13} {s.setting:<{w}} {s.before:>6} {s.removed:>8} {s.left:>6}{note}")
        return "\n".join(rows)


def _text(value: Any, where: str, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FormatError(f"{where}: {what} must be a string")
    return value


def _answers(record: dict[str, Any], where: str) -> list[tuple[str, float | None]]:
    raw = record["answers"]
    if not isinstance(raw, list):
        raise FormatError(f'{where}: "answers" must be a list')
    out = []
    for n, a in enumerate(raw, 1):
        if isinstance(a, str):
            out.append((a, None))
            continue
        if not isinstance(a, dict):
            raise FormatError(f"{where}: answer {n} must be a string or an object with a body")
        text = _text(a.get("body", a.get("text")), where, f"answer {n}'s body")
        score = a.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
            raise FormatError(f'{where}: answer {n}\'s "score" must be a number')
        out.append((text, score))
    return out


def read(path: Path) -> list[Item]:
    """The questions of a file, each with its answers; bad lines say FILE:LINE and what."""
    items = []
    for number, record, problem in jsonl_records(Path(path)):
        where = f"{path}:{number}"
        if problem:
            raise FormatError(f"{where}: {problem}")
        if not isinstance(record, dict):
            raise FormatError(f"{where}: not a JSON object")
        category = str(record.get("community") or record.get("category") or record.get("source") or "all")
        if "answers" in record:
            title = _text(record.get("title"), where, '"title"')
            body = _text(record.get("body", record.get("question")), where, '"body"')
            if not (title.strip() or body.strip()):
                raise FormatError(f'{where}: a question needs a "title" or a "body"')
            answers = _answers(record, where)
        else:
            pairs = chain_pairs(record, where, 'neither a question with "answers" nor a conversation limachat imports')
            title, body = "", pairs[0][1] if pairs else ""
            answers = [(pairs[1][1], None)] if len(pairs) >= 2 and pairs[1][0] == "assistant" else []
        exchanges = 1 if "answers" in record else (len(pairs) + 1) // 2
        items.append(Item(str(record.get("id", f"q{number}")), category, title, body, answers, where, exchanges))
    if not items:
        raise FormatError(f"{path}: empty: no questions to filter")
    return items


# -- the steps ---------------------------------------------------------------------------------------------
_CODE = re.compile(r"```.*?```|`[^`\n]*`|(?m:^(?: {4}|\t).*$)", re.S)
_URL = re.compile(r"(?:https?://|www\.)\S+")
_FIRST_PERSON = re.compile(r"\bI(?:'m|'ve|'d|'ll)?\b|\b(?i:me|my|mine|myself)\b")  # "I" as a capital only


def clean(html: str) -> str:
    """An answer's markup as plain Markdown: code blocks and lists kept; images, links (their text stays)
    and every other tag dropped; bare addresses removed."""
    from markdownify import markdownify

    text = markdownify(html, strip=["a", "img"], heading_style="ATX", bullets="-", code_language="")
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", text)  # Markdown images already in the text
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)  # Markdown links: their words
    text = _URL.sub("", text)
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _prose(text: str) -> str:
    return _CODE.sub(" ", text)


def first_person(text: str) -> list[str]:
    """The first-person words of an answer's prose (code aside)."""
    return _FIRST_PERSON.findall(_prose(text))


def references(text: str, patterns: tuple[str, ...]) -> list[str]:
    prose = _prose(text)
    return [m.group(0) for p in patterns for m in re.finditer(p, prose, re.I | re.M)]


def run(items: list[Item], settings: Settings = Settings()) -> Result:
    """Every step in turn, each counting the answers it removed (from the top-answer step on, one a question)."""
    steps: list[Step] = []

    def step(name: str, setting: str, kept: list[Item], before: int, note: str = "") -> list[Item]:
        steps.append(Step(name, setting, before, before - len(kept), note))
        return kept

    def answers(group: list[Item]) -> int:
        return sum(len(i.answers) for i in group)

    live = [i for i in items if i.exchanges == 1]
    steps.append(Step("single-turn", "one question and its answers", answers(items), answers(items) - answers(live),
                      f"{len(items) - len(live)} conversations of more than one exchange"))  # fmt: skip
    before = answers(live)
    for i in live:
        if i.answers:  # the highest score; the first among equals, and without scores the first listed
            i.answer, i.score = max(i.answers, key=lambda a: a[1] if a[1] is not None else float("-inf"))
    live = step("top-answer", "the highest-voted answer of each question", [i for i in live if i.answer], before)
    n = len(live)
    changed = 0
    for i in live:
        text = clean(i.answer)
        changed += text != i.answer
        i.answer = text
        i.title, i.body = clean(i.title), clean(i.body)
    live = step("clean", "Markdown: code, lists kept; no HTML, images, links", [i for i in live if i.answer], n,
                f"{changed} rewritten")  # fmt: skip
    live = step(
        "first-person", "no I, me, my ... outside code", [i for i in live if not first_person(i.answer)], len(live)
    )
    live = step(
        "references",
        "no pointers to other answers or the site",
        [i for i in live if not references(i.answer, settings.references)],
        len(live),
    )
    window = f"{settings.min_chars:,} to {settings.max_chars:,} characters"
    live = step(
        "length", window, [i for i in live if settings.min_chars <= len(i.answer) <= settings.max_chars], len(live)
    )
    rng = random.Random(settings.seed)
    by: dict[str, list[Item]] = defaultdict(list)
    for i in live:
        by[i.category].append(i)
    kept = []
    for category in sorted(by):
        group = by[category]
        if settings.per_category is not None and len(group) > settings.per_category:
            group = rng.sample(group, settings.per_category)
        kept += group
    cap = "all" if settings.per_category is None else f"at most {settings.per_category}"
    live = step("per-category", f"{cap} per community, sampled", kept, len(live), f"{len(by)} communities")
    for i in live:
        choices = [(k, v) for k, v in (("title", i.title), ("body", i.body)) if v.strip()]
        i.prompt_from, i.prompt = rng.choice(choices)
    froms = sum(i.prompt_from == "title" for i in live)
    step("prompt", "the title or the body, at random", live, len(live), f"{froms} titles, {len(live) - froms} bodies")
    return Result(live, steps)


def save(store, result: Result, name: str, settings: Settings, source: str, replace: bool = False) -> int:
    """The kept items as imported chains (prompt, answer), and the selection `name` of them."""
    records = []
    categories = sorted({i.category for i in result.items})
    for i in result.items:
        meta = {
            "source": i.category,
            "recipe": RECIPE,
            "question": i.id,
            "score": i.score,
            "prompt_from": i.prompt_from,
        }
        records.append(([("user", i.prompt), ("assistant", i.answer)], meta, i.where))

    def write(db) -> list[str]:
        leaves = []
        for pairs, meta, where in records:
            store.import_conversation(pairs, meta, RECIPE, source, int(where.rsplit(":", 1)[1]))
            leaves.append(store.conversation_leaf(pairs, meta, RECIPE))
        return leaves

    leaves = store.transaction(write)
    params = {**asdict(settings), "references": list(settings.references), "recipe": RECIPE, "source": source}
    coverage = {"steps": [{**asdict(s), "left": s.left} for s in result.steps]}
    chosen = [(leaf, categories.index(i.category)) for leaf, i in zip(leaves, result.items)]
    return store.save_selection(name, RECIPE, json.loads(json.dumps(params)), coverage, chosen, replace=replace)
