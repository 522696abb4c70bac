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
from concurrent.futures import ThreadPoolExecutor
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


def in_browser(base_url: str, server_home: Path, rounds: int = 3, tokens: int = 256) -> dict:
    """A reply as a person sees it: `limachat app` against the server, Chromium on the same cores, a chat
    turn of `tokens` tokens sent from the page (its rate from the stored turn's timings, as the app read
    the stream), alternated with the direct client on the same prompt and length. Returns tokens/s per side."""
    import os
    import shutil
    import subprocess
    import sys

    from playwright.sync_api import sync_playwright

    from limachat.serve.net import free_local_port

    out: dict[str, list[float]] = {"page": [], "direct": []}
    with tempfile.TemporaryDirectory() as d:
        home, port = Path(d), free_local_port()
        shutil.copy(server_home / "server.key", home / "server.key")
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIMACHAT_")}
        env.update(
            LIMACHAT_HOME=str(home),
            LIMACHAT_SERVER__PORT=base_url.rsplit(":", 1)[1].split("/")[0],
            LIMACHAT_SAMPLING__MAX_TOKENS=str(tokens),
            LIMACHAT_SAMPLING__EXTRA=json.dumps({"ignore_eos": True}),
        )
        log = home / "app.log"
        app = subprocess.Popen(
            [sys.executable, "-m", "limachat.cli", "app", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
        )
        try:
            while "app ready" not in log.read_text(errors="replace"):
                if app.poll() is not None:
                    raise SystemExit(f"the app did not start; see {log}")
                time.sleep(0.5)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=shutil.which("chromium"))
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"http://127.0.0.1:{port}", wait_until="load")
                page.locator("#annotator textarea, #annotator input").first.fill("bench")
                box = page.locator("#chat-input textarea")
                for i in range(rounds + 1):  # the first is a warm-up
                    page.get_by_role("button", name="New session").click()  # one turn each, as the direct side
                    time.sleep(1)
                    box.fill(PROMPT)
                    box.press("Enter")
                    deadline = time.monotonic() + 600
                    while (row := _finished(home / "limachat.db", i)) is None:
                        if time.monotonic() > deadline:
                            raise SystemExit(f"no finished reply from the page after 600 s; see {log}")
                        time.sleep(0.2)
                    time.sleep(2)  # a person reads; the reply's fluency score finishes meanwhile
                    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API holds this thread's event loop
                        ttft, total, got = pool.submit(asyncio.run, _direct(base_url, tokens)).result()
                    if i:
                        out["page"].append(row[0] / (row[2] - row[1]))
                        out["direct"].append(got / (total - ttft))
                browser.close()
        finally:
            app.terminate()
            app.wait(timeout=30)
    print(
        f"  in a browser: page {[round(x, 1) for x in out['page']]} tok/s, direct {[round(x, 1) for x in out['direct']]}"
    )
    return out


def _finished(db: Path, n: int) -> tuple | None:
    """(completion tokens, time to first token, latency) of the newest finished reply, once there are n + 1."""
    import sqlite3

    with sqlite3.connect(db) as c:
        rows = c.execute(
            "select completion_tokens, ttft, latency from turns where role = 'assistant' and status = 'ok' "
            "order by created desc"
        ).fetchall()
    return rows[0] if len(rows) > n else None


async def _direct(base_url: str, tokens: int) -> tuple[float, float, int]:
    async with httpx.AsyncClient(timeout=600) as http:
        return await direct_stream(http, base_url, "dialogue", tokens)
