"""CITING's rounds (Feng et al., 2023), the whole loop: revise with the teacher (curate/revise.py), train
`<name>-rK` on the bundled set plus the revised chains (train/), load it into the running server
(serve/), ask it the revised chains' questions again, and have the judge label its replies, which the
next round revises. The one module that joins curate, train and serve."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from limachat.curate import judge
from limachat.curate.revise import revise
from limachat.dialogues.export import Filters, chains
from limachat.jobs import Progress
from limachat.layout import DIALOGUE
from limachat.replies import converse
from limachat.serve.base import prepare_base
from limachat.serve.client import ChatClient
from limachat.serve.server import load_adapter
from limachat.train.data import bundled_examples, from_chains, split
from limachat.train.pipeline import run


async def _replay(
    store,
    client: ChatClient,
    checkpoint: str,
    preset: str | None,
    params: dict[str, Any],
    context_window: int,
    sources: list[str],
    round_: int,
    bar,
) -> int:
    """Ask `checkpoint` the user turns of each source chain (by its revised turn), in a fresh chat session,
    each reply stored as the app stores one (its preset, the sampling sent and what was left out)."""
    from limachat.curate.common import bounded

    bar.stage(f"replaying to {checkpoint}", total=len(sources), unit="chain")

    async def one(turn_id):
        users = [t["content"] for t in await store.aio.branch(turn_id) if t["role"] == "user"]
        meta = {"round": round_, "replay_of": turn_id}
        ids = await converse(
            store.aio, client, checkpoint, users, meta=meta, prompt_set=checkpoint, preset=preset, params=params,
            context_window=context_window,
        )  # fmt: skip
        return len(ids)

    return sum(await bounded(sources, one, 4, bar))


def rounds(
    store,
    settings,
    endpoint,
    f,
    *,
    rounds: int | None,
    name: str,
    epochs: int | None,
    max_steps: int | None = None,
    labels: tuple[str, ...],
    raters: str,
    limit: int | None,
    concurrency: int,
):
    """Revise once (rounds None), or `rounds` times: revise, train `<name>-rK` on the bundled set plus the
    revised chains, serve it, replay their instructions to it, judge the replies, and revise those next.
    Yields a line per step."""
    _, params = settings.sampling_for(None)
    params = {**params, "max_tokens": settings.curate.teacher_max_tokens}
    for k in range(1, (rounds or 1) + 1):
        summary = revise(
            store,
            endpoint,
            f,
            labels=labels,
            raters=raters,
            limit=limit,
            params=params,
            max_tokens=settings.curate.judge_max_tokens,
            concurrency=concurrency,
        )
        yield (f"round {k}: " if rounds else "") + summary.line()
        if not rounds:
            return
        revised = sorted(
            {
                e["turn_id"]
                for e in store.teacher_edits()
                if e["annotator"] == summary.teacher and e["review"] != "rejected"
            }
        )
        if not revised:
            raise ValueError(f"round {k}: no revisions to train on")
        checkpoint = f"{name}-r{k}"
        leaves = {c.leaf: c for c in chains(store, Filters(raters="all")) if {t["id"] for t in c.turns} & set(revised)}
        store.save_selection(
            f"{checkpoint}-data",
            "revised",
            {"round": k, "teacher": summary.teacher},
            {},
            [(leaf, 0) for leaf in leaves],
            replace=True,
        )
        data = chains(
            store, Filters(raters="all", selection=f"{checkpoint}-data", prefer_gold=True, gold_from="teachers")
        )
        base = prepare_base(settings.home, settings.server.base, print).model
        run(
            settings,
            [DIALOGUE],
            split(bundled_examples() + from_chains(data)),
            base,
            {"epochs": epochs, "max_steps": max_steps},
            name=checkpoint,
            progress=print,
        )
        load_adapter(
            settings.local_base_url, checkpoint, settings.layout.checkpoint(checkpoint), settings.layout.api_key()
        )
        client = ChatClient(settings.local(checkpoint), timeout=600)
        preset, chat_params = settings.sampling_for(None)
        with Progress(f"replaying to {checkpoint}", total=len(revised), unit="chain") as bar:
            replies = asyncio.run(
                _replay(store, client, checkpoint, preset, chat_params, settings.server.max_model_len, revised, k, bar)
            )
        yield f"round {k}: {checkpoint} trained on {len(leaves)} revised chains and served; answered {replies} turns"
        verdict = judge.run(
            store,
            settings.endpoint(settings.curate.judge),
            "label",
            Filters(checkpoint=checkpoint),
            concurrency=concurrency,
            max_tokens=settings.curate.judge_max_tokens,
        )
        yield f"round {k}: {verdict.line()}"
        f = replace(f, checkpoint=checkpoint, selection=None, annotator=None, mode=None, since=None, until=None)
        raters, limit = "judges", None
