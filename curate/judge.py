"""`limachat judge`: an LLM labels stored assistant turns, beside the humans.

Three modes, each a versioned prompt in curate/prompts/:
- `label`: fail / pass / excellent with LIMA's definitions (Zhou et al., 2023, section 4.3), the
  last reply judged in the context of the whole chain before it; stored as the judge's rating.
- `score`: AlpaGasus' 0-5 accuracy score, score first and then its explanation (Chen et al., 2023,
  who kept the examples scoring at least 4.5); stored as a judgment (`export --min-score`).
- `pairwise`: for compare sessions, which side's reply at an exchange is better, MT-Bench style
  (Zheng et al., 2023): asked twice with the sides swapped; two different answers are recorded as
  `inconsistent` (counted as a tie in win rates).
The answer is constrained by a JSON schema where the endpoint allows it; an answer that still does
not parse is stored as a judgment with its error, and the next run asks again. Turns a judge has
already answered (parsed) are skipped, so a stopped run resumes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from limachat.curate.common import annotator_name, ask_json, assistant_turns, bounded, prompt, reachable, show
from limachat.dialogues.values import LABELS

SCHEMAS: dict[str, dict[str, Any]] = {
    "label": {
        "type": "object",
        "properties": {
            "label": {"type": "string", "enum": list(LABELS)},
            "reason": {"type": "string", "maxLength": 400},
        },
        "required": ["label", "reason"],
        "additionalProperties": False,
    },
    "score": {
        "type": "object",
        "properties": {
            "score": {"type": "number", "minimum": 0, "maximum": 5},
            "explanation": {"type": "string", "maxLength": 400},
        },
        "required": ["score", "explanation"],
        "additionalProperties": False,
    },
    "pairwise": {
        "type": "object",
        "properties": {
            "verdict": {"type": "string", "enum": ["A", "B", "C"]},
            "reason": {"type": "string", "maxLength": 400},
        },
        "required": ["verdict", "reason"],
        "additionalProperties": False,
    },
}


def _check(mode: str):
    def check(data: dict) -> str | None:
        if mode == "label":
            return None if data.get("label") in LABELS else f"no label among {', '.join(LABELS)}"
        if mode == "score":
            s = data.get("score")
            return None if isinstance(s, (int, float)) and 0 <= s <= 5 else "no score from 0 to 5"
        return None if data.get("verdict") in ("A", "B", "C") else "no verdict A, B or C"

    return check


@dataclass
class Summary:
    judge: str
    mode: str
    asked: int = 0  # turns (or pairs) judged this run
    parsed: int = 0
    skipped: int = 0  # already judged
    results: dict[str, int] = field(default_factory=dict)
    scores: list[float] = field(default_factory=list)

    def line(self) -> str:
        tally = ", ".join(f"{k} {v}" for k, v in sorted(self.results.items()))
        if self.scores:
            tally = f"mean score {sum(self.scores) / len(self.scores):.2f}, {sum(s >= 4.5 for s in self.scores)} at 4.5 or more"
        return (
            f"{self.judge}: judged {self.asked} ({self.parsed} parsed{', ' + tally if tally else ''}); "
            f"{self.skipped} already judged, skipped"
        )


def targets(store, mode: str, judge: str, f, limit: int | None) -> tuple[list, int]:
    """What this run judges (turn ids, or (turn a, turn b) pairs) and how many were judged before."""
    done = store.judged(judge, mode)
    if mode == "pairwise":
        sessions = store.sessions_where(f.mode, f.since, f.until)
        pairs = [(a, b) for s, a, b in store.compare_pairs() if s in sessions]
        if f.checkpoint:
            checkpoint = {row[0]: row[4] for row in store.tree()}  # one read, not one per pair
            pairs = [(a, b) for a, b in pairs if f.checkpoint in (checkpoint[a], checkpoint[b])]
        todo = [p for p in pairs if p not in done]
    else:
        turns = [t["id"] for t in assistant_turns(store, f)]
        todo = [t for t in turns if (t, None) not in done]
    skipped = (len(pairs) if mode == "pairwise" else len(turns)) - len(todo)
    return (todo[:limit] if limit else todo), skipped


async def _one(store, client, mode: str, judge: str, p, target, max_tokens: int) -> str | float | None:
    """Judge one turn (or pair); store what came back; return the result (None: did not parse)."""
    schema, check = SCHEMAS[mode], _check(mode)
    if mode == "pairwise":
        a, b = target
        conv = {"a": show(await store.aio.messages(a)), "b": show(await store.aio.messages(b))}
        first, second = await asyncio.gather(
            ask_json(client, p.render(conversation_a=conv["a"], conversation_b=conv["b"]), schema, max_tokens, check),
            ask_json(client, p.render(conversation_a=conv["b"], conversation_b=conv["a"]), schema, max_tokens, check),
        )
        raw = [first.raw, second.raw]
        if first.data is None or second.data is None:
            await store.aio.record_judgment(judge, mode, a, turn_b=b, raw=raw, error=first.error or second.error)
            return None
        # The second game shows side b as "A": map both back to the sides.
        g1 = {"A": "a", "B": "b", "C": "tie"}[first.data["verdict"]]
        g2 = {"A": "b", "B": "a", "C": "tie"}[second.data["verdict"]]
        result = g1 if g1 == g2 else "inconsistent"
        await store.aio.record_judgment(
            judge,
            mode,
            a,
            turn_b=b,
            result=result,
            raw=raw,
            explanation=f"A/B order: {first.data.get('reason', '')} | B/A order: {second.data.get('reason', '')}",
        )
        return result
    messages = await store.aio.messages(target)
    reply = messages.pop()["content"]
    answer = await ask_json(client, p.render(conversation=show(messages), reply=reply), schema, max_tokens, check)
    if answer.data is None:
        await store.aio.record_judgment(judge, mode, target, raw=answer.raw, error=answer.error)
        return None
    if mode == "label":
        await store.aio.record_judgment(
            judge, mode, target, result=answer.data["label"], explanation=answer.data.get("reason"), raw=answer.raw
        )
        return answer.data["label"]
    score = float(answer.data["score"])
    await store.aio.record_judgment(
        judge, mode, target, score=score, explanation=answer.data.get("explanation"), raw=answer.raw
    )
    return score


def run(
    store,
    endpoint,
    mode: str,
    f,
    *,
    limit: int | None = None,
    concurrency: int = 8,
    max_tokens: int = 256,
    prompt_version: int | None = None,
    progress_cls=None,
) -> Summary:
    """Judge the turns the filters pick with `endpoint` (a Checkpoint with its base_url)."""
    from limachat.jobs import Progress
    from limachat.serve.client import ChatClient

    p = prompt(mode, prompt_version)
    reachable(endpoint, "judge")
    judge = annotator_name("judge", endpoint, p.tag)
    store.register_annotator(judge, "judge", model=endpoint.model, endpoint=endpoint.base_url, prompt=p.tag)
    todo, skipped = targets(store, mode, judge, f, limit)
    summary = Summary(judge, mode, skipped=skipped)
    client = ChatClient(endpoint, timeout=300)
    with (progress_cls or Progress)(
        f"judging ({mode})", total=len(todo), unit="pair" if mode == "pairwise" else "turn"
    ) as bar:
        bar.message(f"{judge}: {len(todo)} to judge, {skipped} already judged")
        results = asyncio.run(
            bounded(todo, lambda t: _one(store, client, mode, judge, p, t, max_tokens), concurrency, bar)
        )
        summary.asked = len(results)
        for r in results:
            if isinstance(r, float):
                summary.scores.append(r)
            elif r is not None:
                summary.results[r] = summary.results.get(r, 0) + 1
            summary.parsed += r is not None
        bar.finish(message=summary.line())
    return summary
