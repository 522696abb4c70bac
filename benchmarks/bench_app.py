"""The app's own code path against the same vLLM server: a compare turn against a single turn, and
the chat handler against a minimal direct client at 1, 4 and 16 concurrent streams.

Both sides generate exactly `tokens` tokens (`ignore_eos`), so their times compare like for like.
The app path is the handler the Gradio event calls (`chat.send`, `compare.send`): the session and
user turn saved first, the reply streamed through the client, partial saves, the view rebuilt per
piece, the finished turn written. The direct client is one httpx SSE stream and nothing else.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from limachat.demo import chat, compare
from limachat.demo.answer import Deps
from limachat.dialogues.store import Store
from limachat.serve.checkpoints import Checkpoint
from limachat.settings import Settings

PROMPT = "Tell me about the history of lighthouses and the people who kept them."
KEYS: dict[str, str] = {}  # URL -> the API key of the `limachat serve` there (bench_serve.serving)


def key(url: str) -> str | None:
    """The API key a benchmark sends to `url`: that of the server it started, else the home's (LIMACHAT_HOME)."""
    return KEYS.get(url) or Settings().layout.api_key()


def auth(url: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {k}"} if (k := key(url)) else {}


def make_deps(base_url: str, home: Path, tokens: int) -> Deps:
    settings = Settings(home=home, sampling={"max_tokens": tokens, "extra": {"ignore_eos": True}})
    cks = {n: Checkpoint(name=n, model=n, base_url=base_url, api_key=key(base_url)) for n in ("zero-shot", "dialogue")}
    return Deps(Store(home / "bench.db"), cks, settings)


async def app_stream(deps: Deps, checkpoint: str) -> tuple[float, float, int]:
    """(time to first token, total seconds, completion tokens) of one chat turn through the handler."""
    start = time.perf_counter()
    ttft = None
    async for state, v in chat.send(deps, chat.blank(), PROMPT, checkpoint, "bench"):  # noqa: B007 - state is read after the loop
        if ttft is None and len(v.history) == 2 and v.history[1]["content"] not in ("", "…"):
            ttft = time.perf_counter() - start
    total = time.perf_counter() - start
    return ttft, total, (await deps.store.aio.turn(state["ids"][-1]))["completion_tokens"]


async def direct_stream(
    http: httpx.AsyncClient, base_url: str, model: str, tokens: int, prompt: str = PROMPT, sampling: dict | None = None
) -> tuple[float, float, int]:
    """The same request with a minimal client: POST, read SSE lines, note the first text and the usage."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": tokens,
        "ignore_eos": True,
        **(sampling or {"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.2}),
    }
    start = time.perf_counter()
    ttft, n = None, 0
    async with http.stream("POST", base_url + "/chat/completions", json=body, headers=auth(base_url)) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if ttft is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                ttft = time.perf_counter() - start
            if chunk.get("usage"):
                n = chunk["usage"]["completion_tokens"]
    return ttft, time.perf_counter() - start, n


async def concurrent(kind: str, deps: Deps, base_url: str, streams: int, tokens: int) -> dict:
    start = time.perf_counter()
    if kind == "app":
        results = await asyncio.gather(*(app_stream(deps, "dialogue") for _ in range(streams)))
    else:
        async with httpx.AsyncClient(timeout=600) as http:
            results = await asyncio.gather(*(direct_stream(http, base_url, "dialogue", tokens) for _ in range(streams)))
    wall = time.perf_counter() - start
    return {
        "tok_s": sum(r[2] for r in results) / wall,
        "ttft": statistics.median(r[0] for r in results),
        "tokens": sum(r[2] for r in results),
    }


def streams_vs_direct(base_url: str, levels=(1, 4, 16), rounds: int = 3, tokens: int = 48) -> dict:
    """Per level: tok/s and TTFT of both sides, rounds alternating app and direct."""
    out = {}
    with tempfile.TemporaryDirectory() as d:
        deps = make_deps(base_url, Path(d), tokens)
        asyncio.run(concurrent("direct", deps, base_url, 2, tokens))  # warm-up
        for n in levels:
            runs = {"app": [], "direct": []}
            for _ in range(rounds):
                for kind in ("direct", "app"):
                    r = asyncio.run(concurrent(kind, deps, base_url, n, tokens))
                    assert r["tokens"] == n * tokens, f"expected {n * tokens} tokens, got {r['tokens']}"
                    runs[kind].append(r)
            out[n] = runs
            print(
                f"  {n} streams: app {[round(r['tok_s'], 1) for r in runs['app']]} tok/s, "
                f"direct {[round(r['tok_s'], 1) for r in runs['direct']]} tok/s"
            )
        deps.store.close()
    return out


def compare_vs_single(base_url: str, rounds: int = 5, tokens: int = 48) -> dict:
    """Wall time of a compare turn (both checkpoints at once) and of a single chat turn."""
    single, both = [], []
    with tempfile.TemporaryDirectory() as d:
        deps = make_deps(base_url, Path(d), tokens)

        async def one_compare():
            start = time.perf_counter()
            async for _ in compare.send(deps, compare.blank(), PROMPT, "zero-shot", "dialogue", False, "bench"):
                pass
            return time.perf_counter() - start

        asyncio.run(app_stream(deps, "zero-shot"))  # warm-up
        for _ in range(rounds):
            single.append(asyncio.run(app_stream(deps, "dialogue"))[1])
            both.append(asyncio.run(one_compare()))
        deps.store.close()
    print(f"  single {[round(x, 2) for x in single]} s, compare {[round(x, 2) for x in both]} s")
    return {"single": single, "compare": both, "ratio": statistics.median(both) / statistics.median(single)}
