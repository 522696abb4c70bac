"""Serving speed on this CPU: vLLM (as `limachat serve` starts it, LoRA adapter `dialogue`) against
llama.cpp as a yardstick (the prebuilt `xllamacpp` wheel, in its own process), on one prompt.

Every reply is exactly TOKENS tokens (`ignore_eos`, greedy), so the engines compare like for like.
Single stream: decode tokens/s = (tokens - 1) / (end - first token). Four streams: all tokens / wall.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics as st
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from bench_app import direct_stream

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
def serving(home: Path, env: dict[str, str] | None = None):
    """`limachat serve` (the adapters `make demo` trained, or untrained ones) on a free port, with extra
    environment; yields (its URL, seconds until it was ready)."""
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
        yield f"http://127.0.0.1:{port}/v1", _wait(proc, log, "vLLM ready")
    finally:
        _stop(proc)


def vllm(home: Path, rounds: int, env: dict[str, str] | None = None) -> dict:
    """Decode rates of the `dialogue` adapter."""
    with serving(home, env) as (url, ready):
        return {"ready": ready, **measure(url, "dialogue", rounds)}


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


def section(home: Path, rounds: int, spread) -> list[str]:
    from gguf_f32 import write_f32

    from limachat.serve.base import bundled_gguf

    q4 = bundled_gguf()
    f32 = write_f32(q4, home / "bench" / "SmolLM2-135M-Instruct.F32.gguf")
    runs = {
        "vLLM, LoRA `dialogue` (limachat's CPU default: both cores)": vllm(home, rounds),
        "vLLM, LoRA `dialogue`, one core reserved (vLLM's default)": vllm(
            home, rounds, {"VLLM_CPU_NUM_OF_RESERVED_CPU": "1"}
        ),
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
            f"| {name}: ready after | {r['ready']:.0f} s | - |",
        ]
    names = list(runs)
    ours, f32_run, q4_run = runs[names[0]], runs[names[2]], runs[names[3]]
    for n in ("1", "4"):
        label = "1 stream" if n == "1" else "4 streams"
        rows += [
            f"| vLLM+LoRA / llama.cpp float32, {label} (medians) | {st.median(ours[n]) / st.median(f32_run[n]):.2f} | >= 0.6 |",
            f"| vLLM+LoRA / llama.cpp Q4_1, {label} (medians) | {st.median(ours[n]) / st.median(q4_run[n]):.2f} | - |",
            f"| both cores / one reserved, vLLM, {label} (medians) | "
            f"{st.median(ours[n]) / st.median(runs[names[1]][n]):.2f} | - |",
        ]
    return rows
