"""Serving speed on this CPU: vLLM (as `limachat serve` starts it, LoRA adapter `dialogue`) against
llama.cpp as a yardstick (the prebuilt `xllamacpp` wheel, in its own process), on one prompt.

Every reply is exactly TOKENS tokens (`ignore_eos`, greedy), so the engines compare like for like.
Single stream: decode tokens/s = (tokens - 1) / (end - first token). Four streams: all tokens / wall.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics as st
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from bench_app import KEYS, auth, direct_stream

from limachat.layout import Home
from limachat.serve.net import free_local_port as free_port

PROMPT = "Explain in a few paragraphs how a bicycle stays upright while moving."
TOKENS = 128
LLAMA_SERVER = """
import sys, time, xllamacpp as x
p = x.CommonParams()
p.model.path = sys.argv[1]
p.n_ctx, p.n_parallel, p.port, p.hostnames, p.use_jinja = 8192, 4, int(sys.argv[2]), ["127.0.0.1"], True
p.cpuparams.n_threads = p.cpuparams_batch.n_threads = 2
server = x.Server(p)
print("llama.cpp ready", flush=True)
while True:
    time.sleep(1)
"""


async def decode(url: str, model: str, streams: int) -> float:
    async with httpx.AsyncClient(timeout=600) as http:
        start = time.perf_counter()
        results = await asyncio.gather(
            *(direct_stream(http, url, model, TOKENS, PROMPT, {"temperature": 0}) for _ in range(streams))
        )
        wall = time.perf_counter() - start
    if streams == 1:
        first, total, n = results[0]
        return (n - 1) / (total - first)
    return sum(r[2] for r in results) / wall


def measure(url: str, model: str, rounds: int) -> dict[str, list[float]]:
    asyncio.run(decode(url, model, 1))  # warm-up
    return {f"{n}": [asyncio.run(decode(url, model, n)) for _ in range(rounds)] for n in (1, 4)}


def _wait(proc: subprocess.Popen, log: Path, marker: str, timeout: float = 600) -> float:
    start = time.monotonic()
    while marker not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() - start > timeout:
            raise SystemExit(f"server did not start; see {log}")
        time.sleep(0.5)
    return time.monotonic() - start


def _stop(proc: subprocess.Popen, sig: int = signal.SIGINT, grace: float = 120) -> None:
    proc.send_signal(sig)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def serving(home: Path, env: dict[str, str] | None = None, until_compiled: bool = False):
    """`limachat serve` (the adapters `make demo` trained, or untrained ones) on a free port, with extra
    environment; yields (its URL, seconds until it was ready). `until_compiled`: a start that serves
    uncompiled (vLLM's cache lacks the compile) runs on until its background compile is done."""
    port = free_port()
    log = home / "logs" / f"bench-serve-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "limachat.cli", "--home", str(home), "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        env={**os.environ, **(env or {})},
    )
    try:
        ready = _wait(proc, log, "vLLM ready")
        if until_compiled and "uncompiled for now" in log.read_text(errors="replace"):
            _wait(proc, log, "the next start serves the compiled model", timeout=1200)
        url = f"http://127.0.0.1:{port}/v1"
        KEYS[url] = Home(home).api_key()  # `limachat serve` made it in the home
        yield url, ready
    finally:
        _stop(proc)


def vllm(home: Path, rounds: int, env: dict[str, str] | None = None) -> dict:
    """Decode rates of the `dialogue` adapter, on the second start (the first compiles if vLLM's cache lacks
    the compile: in the background, after serving uncompiled)."""
    with serving(home, env, until_compiled=True) as (_, first):
        pass
    with serving(home, env) as (url, ready):
        return {"first": first, "ready": ready, **measure(url, "dialogue", rounds)}


def vllm_without_lora(home: Path, rounds: int) -> dict:
    """vLLM on the same base as `limachat serve` starts it, compiled, with no LoRA at all."""
    from limachat.serve.base import prepare_base
    from limachat.serve.server import ServerConfig, VLLMServer
    from limachat.settings import Settings

    s = Settings(home=home).server
    config = ServerConfig(
        prepare_base(home, None).model, [], "127.0.0.1", free_port(), False, s.dtype, False,
        s.max_model_len, s.max_lora_rank, s.kv_cache_gib, [],
    )  # fmt: skip
    with VLLMServer(config, home / "logs" / f"bench-nolora-{config.port}.log") as server:
        server.start()
        return {"ready": server.start_seconds, **measure(config.url, "base", rounds)}


def llama_cpp(gguf: Path, home: Path, rounds: int) -> dict:
    port = free_port()
    log = home / "logs" / f"bench-llamacpp-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", LLAMA_SERVER, str(gguf), str(port)], stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    try:
        ready = _wait(proc, log, "llama.cpp ready")
        return {"ready": ready, **measure(f"http://127.0.0.1:{port}/v1", "any", rounds)}
    finally:
        _stop(proc, signal.SIGKILL, 10)  # the in-process llama.cpp server ignores Ctrl-C


def scoring(home: Path, rounds: int) -> dict[str, list[float]]:
    """Fluency scoring of a 4-turn conversation's replies (`dialogue`, 128 tokens each): the seconds one
    score takes with the conversation read from the prefix cache and computed whole; and the next reply's
    time to first token when its request arrives with the last reply's score running, and without it."""
    from limachat.serve.fluency import fluency

    turns = [
        "Tell me about the history of the bicycle.",
        "Which invention made it safe?",
        "And the tyres?",
        "Why did that matter?",
        "What came next?",
    ]
    out: dict[str, list[float]] = {"cached": [], "whole": [], "ttft_scored": [], "ttft_alone": []}

    async def ttft(http, url, messages) -> tuple[float, str]:
        body = {"model": "dialogue", "messages": messages, "max_tokens": TOKENS, "ignore_eos": True,
                "temperature": 0, "stream": True}  # fmt: skip
        start, first, text = time.perf_counter(), None, []
        async with http.stream("POST", url + "/chat/completions", json=body, headers=auth(url)) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    import json

                    delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
                    if delta:
                        first = first or time.perf_counter() - start
                        text.append(delta)
        return first, "".join(text)

    async def conversation(url: str, i: int) -> None:
        async with httpx.AsyncClient(timeout=600) as http:
            messages: list[dict[str, str]] = []
            pending = None  # (context, reply) whose score starts with the next request, as the app does it
            for n, turn in enumerate(turns):
                messages.append({"role": "user", "content": f"{turn} ({i})"})
                score = asyncio.create_task(fluency(url, "base", *pending, headers=auth(url))) if pending else None
                first, reply = await ttft(http, url, messages)
                if n:
                    out["ttft_scored" if score else "ttft_alone"].append(first)
                if score:
                    await score
                pending = None
                context = list(messages)
                if n % 2 == 0:  # the next request comes with this reply's score running
                    pending = (context, reply)
                else:  # scored alone: its own time, cached and whole
                    start = time.perf_counter()
                    await fluency(url, "base", context, reply, headers=auth(url))
                    out["cached"].append(time.perf_counter() - start)
                    start = time.perf_counter()
                    await fluency(url, "base", context, reply, cached=False, headers=auth(url))
                    out["whole"].append(time.perf_counter() - start)
                messages.append({"role": "assistant", "content": reply})

    with serving(home) as (url, _):
        for i in range(rounds):
            asyncio.run(conversation(url, i))
        out.update(score_profile(url, rounds))
    return out


def score_profile(url: str, rounds: int) -> dict[str, list[float]]:
    """Where a score's time goes: one prompt-processing request of 16 and of 128 tokens, with and without
    prompt log-probabilities (a fresh first token each time, so the prefix cache holds none of it), and a
    /tokenize round trip (a score makes two)."""
    import random

    root, rng = url.removesuffix("/v1"), random.Random(0)
    ids = httpx.post(root + "/tokenize", json={"model": "base", "prompt": PROMPT * 20}, headers=auth(url)).json()
    ids = ids["tokens"]
    out: dict[str, list[float]] = {"p16": [], "p128": [], "p128_bare": [], "tokenize": []}

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def prompt(n: int, logprobs: bool) -> None:
        body = {"model": "base", "prompt": [rng.randrange(1000, 40000), *ids[: n - 1]], "max_tokens": 1}
        body |= {"temperature": 0, **({"prompt_logprobs": 0} if logprobs else {})}
        httpx.post(url + "/completions", json=body, headers=auth(url), timeout=120).raise_for_status()

    conversation = [{"role": "user", "content": PROMPT}]
    tokenize = {"model": "base", "messages": conversation, "add_generation_prompt": True}
    for _ in range(rounds):
        out["p16"].append(timed(lambda: prompt(16, True)))
        out["p128"].append(timed(lambda: prompt(128, True)))
        out["p128_bare"].append(timed(lambda: prompt(128, False)))
        out["tokenize"].append(timed(lambda: httpx.post(root + "/tokenize", json=tokenize, headers=auth(url))))
    return out


# One decode step's weight traffic, outside the server: every linear layer of the base at one token, through
# the function vLLM's CPU layers call (dispatch_cpu_unquantized_gemm: oneDNN, float32), and the same bytes
# read once by a plain reduction; 2 OpenMP threads bound one per core. vLLM 0.32 binds threads only for
# several ranks: a one-rank engine runs torch's 2 threads unbound, so this is its linear layers' best case.
STEP_PARTS = """
import json, statistics as st, sys, time, torch
from transformers import AutoConfig
from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm
c = AutoConfig.from_pretrained(sys.argv[1])
h, i, d = c.hidden_size, c.intermediate_size, c.hidden_size // c.num_attention_heads
layer = [(h + 2 * c.num_key_value_heads * d, h), (h, h), (2 * i, h), (h, i)]  # qkv, o, gate_up, down
shapes = layer * c.num_hidden_layers + [(c.vocab_size, h)]  # and the logits
layers = []
for out_f, in_f in shapes:
    m = torch.nn.Linear(in_f, out_f, bias=False).requires_grad_(False)
    dispatch_cpu_unquantized_gemm(m, remove_weight=False)
    layers.append((m, torch.randn(1, in_f)))
flat = torch.randn(sum(o * i for o, i in shapes))
def timed(fn, n):
    fn()
    out = []
    for _ in range(n):
        t = time.perf_counter(); fn(); out.append(time.perf_counter() - t)
    return out
gemv = timed(lambda: [m.cpu_linear(x, m.weight, None) for m, x in layers], 20)
read = timed(lambda: flat.sum(), 20)
print(json.dumps({"gemv": gemv, "read": read, "bytes": flat.numel() * 4}))
"""


def step_parts(home: Path) -> dict:
    """Seconds for one decode step's linear layers (vLLM's CPU path) and for reading their weights once."""
    import json

    from limachat.serve.base import prepare_base

    env = {**os.environ, "OMP_NUM_THREADS": "2", "OMP_PROC_BIND": "close", "OMP_PLACES": "cores"}
    run = subprocess.run(
        [sys.executable, "-c", STEP_PARTS, str(prepare_base(home, None).model)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(run.stdout.strip().splitlines()[-1])


LAYOUTS = {
    "1 rank": {},
    "data parallel 2": {"LIMACHAT_SERVER__DATA_PARALLEL": "2"},
    "pipeline parallel 2": {"LIMACHAT_SERVER__PIPELINE_PARALLEL": "2"},
}


def ranks(home: Path, rounds: int, spread) -> list[str]:
    """Decode throughput of `dialogue` on 1 and 8 streams as `limachat serve` runs each layout (compiled; a
    layout's first start compiles unless vLLM's cache has it)."""
    rows, medians = [], {}
    for name, env in LAYOUTS.items():
        with serving(home, env) as (url, ready):
            asyncio.run(decode(url, "dialogue", 1))  # warm-up
            r = {n: [asyncio.run(decode(url, "dialogue", n)) for _ in range(rounds)] for n in (1, 8)}
        print(f"  {name}: ready {ready:.0f} s, {r}")
        medians[name] = {n: st.median(v) for n, v in r.items()}
        rows += [
            f"| {name}: 1 stream | {spread(r[1], unit='tokens/s', digits=1)} | - |",
            f"| {name}: 8 streams | {spread(r[8], unit='tokens/s', digits=1)} | - |",
            f"| {name}: ready after | {ready:.0f} s | - |",
        ]
    for name in list(LAYOUTS)[1:]:
        rows += [
            f"| {name} / 1 rank, {n} stream{'s' if n > 1 else ''} (medians) | "
            f"{medians[name][n] / medians['1 rank'][n]:.2f} | - |"
            for n in (1, 8)
        ]
    return rows


def section(home: Path, rounds: int, spread) -> list[str]:
    from gguf_f32 import write_f32

    from limachat.serve.base import bundled_gguf

    q4 = bundled_gguf()
    f32 = write_f32(q4, home / "bench" / "SmolLM2-135M-Instruct.F32.gguf")
    ours_name = "vLLM, LoRA `dialogue`, as `limachat serve` runs it (compiled, fused LoRA)"
    runs = {
        ours_name: vllm(home, rounds),
        "vLLM, no LoRA, compiled": vllm_without_lora(home, rounds),
        "llama.cpp, float32 GGUF of the same weights, no adapter": llama_cpp(f32, home, rounds),
        "llama.cpp, bundled Q4_1 GGUF, no adapter": llama_cpp(q4, home, rounds),
    }
    for name, r in runs.items():
        print(f"  {name}: {r}")
    rows = []
    for name, r in runs.items():
        rows += [
            f"| {name}: 1 stream | {spread(r['1'], unit='tokens/s', digits=1)} | - |",
            f"| {name}: 4 streams | {spread(r['4'], unit='tokens/s', digits=1)} | - |",
        ]
        if "first" in r:
            rows.append(
                f"| {name}: ready after, first start (uncompiled unless vLLM's cache holds it) | {r['first']:.0f} s | - |"
            )
        rows.append(
            f"| {name}: ready after{', second start' if 'first' in r else ''} | {r['ready']:.0f} s | "
            f"{'<= 45 s' if 'first' in r else '-'} |"
        )
    names = list(runs)
    ours, bare, f32_run, q4_run = (runs[n] for n in names)
    for n in ("1", "4"):
        label = "1 stream" if n == "1" else "4 streams"
        rows += [
            f"| vLLM+LoRA / llama.cpp float32, {label} (medians) | {st.median(ours[n]) / st.median(f32_run[n]):.2f} | {'>= 0.8' if n == '1' else '>= 1.0'} |",
            f"| vLLM+LoRA / llama.cpp Q4_1, {label} (medians) | {st.median(ours[n]) / st.median(q4_run[n]):.2f} | - |",
            f"| vLLM+LoRA / vLLM without LoRA, {label} (medians) | {st.median(ours[n]) / st.median(bare[n]):.2f} | - |",
            f"| vLLM without LoRA / llama.cpp float32, {label} (medians) | "
            f"{st.median(bare[n]) / st.median(f32_run[n]):.2f} | - |",
        ]
    parts = step_parts(home)
    print(f"  a step's parts: {parts}")
    gemv, read, gb = st.median(parts["gemv"]), st.median(parts["read"]), parts["bytes"] / 1e9
    rows += [
        f"| one decode step, vLLM+LoRA (1 / its 1-stream rate, median) | {1000 / st.median(ours['1']):.1f} ms | - |",
        f"| one decode step, llama.cpp float32 (1 / its 1-stream rate, median) | {1000 / st.median(f32_run['1']):.1f} ms | - |",
        f"| a step's linear layers alone, vLLM's CPU path (oneDNN, float32, {gb:.2f} GB of weights) | "
        f"{spread(parts['gemv'], 1000, 'ms', 1)} ({gb / gemv:.0f} GB/s) | - |",
        f"| the same weights read once (a plain sum, 2 threads) | {spread(parts['read'], 1000, 'ms', 1)} "
        f"({gb / read:.0f} GB/s) | - |",
        f"| vLLM's ceiling at 1 stream: llama.cpp's step / vLLM's linear layers alone (medians) | "
        f"{1 / st.median(f32_run['1']) / gemv:.2f} | - |",
    ]
    sc = scoring(home, rounds)
    print(f"  scoring: {sc}")
    rows += [
        f"| fluency score of a reply, conversation from the prefix cache | {spread(sc['cached'])} | <= 0.2 s |",
        f"| fluency score of a reply, whole prompt computed (before) | {spread(sc['whole'])} | - |",
        f"| next reply's first token, the last reply's score running | {spread(sc['ttft_scored'])} | - |",
        f"| next reply's first token, no score running | {spread(sc['ttft_alone'])} | - |",
        f"| first token: scored - alone (medians) | "
        f"{1000 * (st.median(sc['ttft_scored']) - st.median(sc['ttft_alone'])):+.0f} ms | <= +50 ms |",
        f"| a score's parts: one request, a 16-token prompt with log-probabilities | {spread(sc['p16'])} | - |",
        f"| a score's parts: a 128-token prompt with log-probabilities | {spread(sc['p128'])} | - |",
        f"| a score's parts: a 128-token prompt without log-probabilities | {spread(sc['p128_bare'])} | - |",
        f"| a score's parts: a /tokenize round trip (a score makes two) | {spread(sc['tokenize'])} | - |",
    ]
    return rows
