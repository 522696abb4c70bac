"""`limachat revise`: a teacher LLM revises assistant turns against rubrics, after CITING (Feng et al.,
2023): the teacher files the instructions into categories, writes one rubric per category, then
rewrites the chosen replies to meet their rubric; the student is trained on the revisions, for
several rounds (the paper saw quality fall after the third).

limachat keeps each part in the store: categories per instruction (a chain's first user turn),
versioned rubrics a person can edit, and each revision as a gold edit by an annotator of kind
`teacher`, waiting for a person to accept it (it becomes their own gold edit) or reject it.
`train --prefer-gold --gold-from teachers` trains on them. With `--rounds N` (limachat/rounds.py) each
round trains a checkpoint (`<name>-r1`, `-r2` ...), serves it, replays the same instructions to it, has
the judge label the new replies (so the report sets the rounds side by side) and revises those for the next.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from limachat.curate.common import annotator_name, ask_json, assistant_turns, bounded, prompt, reachable

GENERAL = "general"  # where an instruction the teacher did not file goes
# When the teacher's rubric does not parse (stored with the teacher's name and the reason).
DEFAULT_RUBRIC = (
    "- does what the user asked\n- is correct\n- is clear and well organised\n- stays consistent with the conversation"
)
BATCH = 20  # instructions per categorising request
CATEGORY_SCHEMA = {
    "type": "object",
    "properties": {
        "assign": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"request": {"type": "integer"}, "category": {"type": "string", "maxLength": 40}},
                "required": ["request", "category"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["assign"],
    "additionalProperties": False,
}
RUBRIC_SCHEMA = {
    "type": "object",
    "properties": {"rubric": {"type": "string", "maxLength": 1200}},
    "required": ["rubric"],
    "additionalProperties": False,
}


@dataclass
class Summary:
    teacher: str
    categorized: int = 0
    rubrics: int = 0
    revised: int = 0
    unchanged: int = 0  # the teacher gave the reply back as it was: nothing stored, nothing to review
    failed: int = 0
    skipped: int = 0  # revised by this teacher before
    asked_again: int = 0  # revisions cut off by the token limit and asked for once more
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.teacher}: {self.categorized} instructions filed, {self.rubrics} new rubrics, {self.revised} turns revised"
            f"{f', {self.unchanged} given back unchanged' if self.unchanged else ''}"
            f"{f', {self.asked_again} asked again after hitting the token limit' if self.asked_again else ''}"
            f"{f', {self.failed} failed ({self.errors[0]})' if self.failed else ''}; {self.skipped} revised before, skipped"
        )


def chosen_turns(
    store, f, labels: tuple[str, ...], raters: str, teacher: str, limit: int | None
) -> tuple[list[str], int]:
    """Assistant turns the filters pick whose label (lowest among `raters`) is one of `labels`, less
    those this teacher revised already."""
    lowest = store.lowest_labels(raters=raters)
    turns = [t["id"] for t in assistant_turns(store, f) if lowest.get(t["id"]) in labels]
    if f.selection:
        keep = {t["id"] for c in _selected_chains(store, f) for t in c.turns}
        turns = [t for t in turns if t in keep]
    done = {e["turn_id"] for e in store.teacher_edits() if e["annotator"] == teacher}
    todo = [t for t in turns if t not in done]
    return (todo[:limit] if limit else todo), len(turns) - len(todo)


def _selected_chains(store, f):
    from limachat.dialogues.export import Filters, chains

    return chains(store, Filters(selection=f.selection, raters="all"))


async def _categorize(store, client, teacher: str, instructions: dict[str, str], max_tokens: int, bar) -> int:
    """File the instructions not filed yet; returns how many were filed."""
    known = await store.aio.categories()
    todo = [(tid, text) for tid, text in instructions.items() if tid not in known]
    if not todo:
        return 0
    p = prompt("categorize")
    names = sorted(set(known.values()))
    bar.stage("categorising", total=len(todo), unit="instruction")

    async def batch(part):
        requests = "\n".join(f"{i + 1}. {text[:300]}" for i, (_, text) in enumerate(part))
        text = p.render(
            requests=requests,
            max_categories=str(max(3, min(12, len(instructions) // 3))),
            known=", ".join(names) or "none yet",
        )
        answer = await ask_json(
            client,
            text,
            CATEGORY_SCHEMA,
            max_tokens,
            lambda d: None if isinstance(d.get("assign"), list) else "no list",
        )
        got = {}
        for item in (answer.data or {}).get("assign", []):
            if isinstance(item, dict) and isinstance(item.get("request"), int) and 1 <= item["request"] <= len(part):
                name = " ".join(str(item.get("category", "")).lower().split())[:40]
                if name:
                    got[part[item["request"] - 1][0]] = name
        filed = {tid: got.get(tid, GENERAL) for tid, _ in part}
        await store.aio.categorize(filed, teacher)
        return len(filed)

    parts = [todo[i : i + BATCH] for i in range(0, len(todo), BATCH)]
    return sum(await bounded(parts, batch, 4, bar, weight=len))


async def _rubrics(store, client, teacher: str, examples: dict[str, list[str]], max_tokens: int, bar) -> int:
    """A rubric for every category that has none; returns how many were written."""
    have = await store.aio.rubrics()
    todo = [c for c in sorted(examples) if c not in have]
    if not todo:
        return 0
    p = prompt("rubric")
    bar.stage("writing rubrics", total=len(todo), unit="rubric")

    async def one(category):
        listed = "\n".join(f"- {text[:300]}" for text in examples[category][:5])
        answer = await ask_json(
            client,
            p.render(category=category, examples=listed),
            RUBRIC_SCHEMA,
            max_tokens,
            lambda d: None if str(d.get("rubric", "")).strip() else "an empty rubric",
        )
        text = answer.data["rubric"].strip() if answer.data else DEFAULT_RUBRIC
        await store.aio.set_rubric(category, text, teacher if answer.data else f"{teacher} (fallback: {answer.error})")
        return 1

    return sum(await bounded(todo, one, 4, bar))


async def _revise_all(
    store, client, teacher: str, turns: list[str], params: dict[str, Any], bar, summary: Summary, concurrency: int
) -> None:
    p = prompt("revise")
    rubrics, categories = await store.aio.rubrics(), await store.aio.categories()
    bar.stage("revising", total=len(turns), unit="turn")

    async def one(turn_id):
        from limachat.serve.client import ClientError

        branch = await store.aio.branch(turn_id)
        messages = await store.aio.messages(turn_id)  # ends with the reply to revise
        category = categories.get(branch[0]["id"], GENERAL)
        rubric = rubrics.get(category) or rubrics.get(GENERAL)
        # The conversation goes as the chat it was (with the reply to revise as the teacher's own last
        # turn), between the rubric as the system message and the request to rewrite: small models
        # echo a transcript pasted into one message instead of answering it.
        system, request = p.render(category=category, rubric=rubric["content"] if rubric else DEFAULT_RUBRIC).split(
            "\n----\n"
        )
        chat = [{"role": "system", "content": system}, *messages, {"role": "user", "content": request}]
        try:
            done = await client.complete(chat, params)
            if done.finish_reason == "length":  # cut off: one fresh draw (the next seed, where one is set)
                summary.asked_again += 1
                done = await client.complete(
                    chat, {**params, "seed": params["seed"] + 1} if "seed" in params else params
                )
        except ClientError as e:
            summary.failed += 1
            summary.errors.append(str(e)[:200])
            return
        revised = done.text.strip()
        if not revised or done.finish_reason == "length":
            summary.failed += 1
            summary.errors.append("the revision was empty" if not revised else "the revision hit the token limit twice")
            return
        if " ".join(revised.split()) == " ".join(messages[-1]["content"].split()):
            summary.unchanged += 1
            return
        await store.aio.teacher_edit(turn_id, teacher, revised, rubric["id"] if rubric else None)
        summary.revised += 1

    await bounded(turns, one, concurrency, bar)


def revise(
    store,
    endpoint,
    f,
    *,
    labels: tuple[str, ...] = ("fail", "pass"),
    raters: str = "all",
    limit: int | None = None,
    params: dict[str, Any],
    max_tokens: int = 256,
    concurrency: int = 8,
    progress_cls=None,
) -> Summary:
    """One round: categorise, write missing rubrics, revise the chosen turns (`params`: the teacher's sampling)."""
    from limachat.jobs import Progress
    from limachat.serve.client import ChatClient

    reachable(endpoint, "teacher")
    teacher = annotator_name("teacher", endpoint, prompt("revise").tag)
    store.register_annotator(
        teacher, "teacher", model=endpoint.model, endpoint=endpoint.base_url, prompt=prompt("revise").tag
    )
    turns, skipped = chosen_turns(store, f, labels, raters, teacher, limit)
    summary = Summary(teacher, skipped=skipped)
    client = ChatClient(endpoint, timeout=600)
    with (progress_cls or Progress)("choosing turns", total=len(turns), unit="turn") as bar:
        bar.message(f"{teacher}: {len(turns)} turns labelled {' or '.join(labels)} to revise, {skipped} revised before")
        firsts = {tid: store.branch(tid)[0] for tid in turns}
        instructions = {t["id"]: t["content"] for t in firsts.values()}

        async def go():
            summary.categorized = await _categorize(store, client, teacher, instructions, max_tokens, bar)
            cats = await store.aio.categories()
            examples: dict[str, list[str]] = {}
            for tid, text in instructions.items():
                examples.setdefault(cats.get(tid, GENERAL), []).append(text)
            summary.rubrics = await _rubrics(store, client, teacher, examples, max_tokens, bar)
            await _revise_all(store, client, teacher, turns, params, bar, summary, concurrency)

        asyncio.run(go())
        bar.finish(message=summary.line())
    return summary
