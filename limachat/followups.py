"""The held-out follow-up check: does a checkpoint answer each new question of a conversation, or
give back its previous reply?

The conversations (dialogues/data/followups.jsonl, written for this check and never trained on)
are run as several users would run them: all at once, so vLLM batches them, each reply generated
live from the conversation so far. Each follow-up reply is scored for repeats
(limachat.dialogues.repeats), fluency under the base (limachat.serve.fluency), whether it stopped by
itself, and its length. The coherence test and `make bench` both use it.
"""

from __future__ import annotations

import asyncio
import json
import statistics as st
from dataclasses import dataclass
from typing import Any

from limachat.dialogues import bundled
from limachat.dialogues.repeats import is_repeat, repeat_share
from limachat.serve.checkpoints import Checkpoint
from limachat.serve.client import ChatClient
from limachat.serve.fluency import fluency

FLUENCY_TIMEOUT = 600.0  # seconds: scoring waits behind every conversation's generation


def conversations() -> list[dict[str, Any]]:
    """The held-out follow-up conversations: `id` and the user's `turns` (3 or more each)."""
    text = bundled("followups.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@dataclass
class Reply:
    conversation: str
    turn: int  # 1 for the opening reply
    text: str
    finish: str | None
    tokens: int
    repeat: float | None  # None for the opening reply
    fluency: float | None


async def _one(client: ChatClient, url: str, scorer: str, convo: dict[str, Any], params: dict[str, Any]) -> list[Reply]:
    messages: list[dict[str, str]] = []
    out = []
    for i, prompt in enumerate(convo["turns"], 1):
        messages.append({"role": "user", "content": prompt})
        done = await client.complete(messages, params)
        earlier = [m["content"] for m in messages if m["role"] == "assistant"]
        score = await fluency(url, scorer, messages, done.text, timeout=FLUENCY_TIMEOUT, headers=client.headers)
        out.append(
            Reply(
                convo["id"],
                i,
                done.text,
                done.finish_reason,
                done.usage.completion_tokens if done.usage else 0,
                repeat_share(done.text, earlier) if i > 1 else None,
                score,
            )
        )
        messages.append({"role": "assistant", "content": done.text})
    return out


async def run(
    url: str,
    runs: dict[str, tuple[str, dict[str, Any]]],
    convos: list[dict[str, Any]] | None = None,
    scorer: str = "base",
    api_key: str | None = None,
) -> dict[str, list[Reply]]:
    """Every conversation for every run at once, at the server `url` with its `api_key`. `runs`: a name ->
    (model id, sampling parameters)."""
    convos = conversations() if convos is None else convos
    clients = {
        name: ChatClient(Checkpoint(name=model, model=model, base_url=url, api_key=api_key))
        for name, (model, _) in runs.items()
    }
    jobs = [(name, _one(clients[name], url, scorer, c, params)) for name, (_, params) in runs.items() for c in convos]
    done = await asyncio.gather(*(j for _, j in jobs))
    out: dict[str, list[Reply]] = {name: [] for name in runs}
    for (name, _), replies in zip(jobs, done):
        out[name] += replies
    return out


def summary(replies: list[Reply]) -> dict[str, Any]:
    """Repeats among the follow-ups; median fluency, stop rate and median length over every reply."""
    follow = [r for r in replies if r.turn > 1]
    scores = [r.fluency for r in replies if r.fluency is not None]
    return {
        "followups": len(follow),
        "repeats": sum(is_repeat(r.repeat) for r in follow),
        "replies": len(replies),
        "stopped": sum(r.finish == "stop" for r in replies),
        "fluency": st.median(scores) if scores else None,
        "tokens": st.median(r.tokens for r in replies),
        "worst": max((r.repeat for r in follow if r.repeat is not None), default=None),
    }
