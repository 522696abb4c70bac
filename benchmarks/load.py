"""`make soak`, second part: how many annotators one app process holds. The app alone (its handlers, the
store, the Gradio queue) under 32, 64, 128 and 256 concurrent chat sessions, each a person's pace: send a
message, watch the reply stream in, read it for a while, rate it with a key, write the next message.

The checkpoints are a stand-in OpenAI endpoint that streams at GPU speed (benchmarks/standin.py: a real
HTTP server of our own, since no GPU-speed backend runs here; the first token after 50 ms, then 60
tokens a second per stream, 200 tokens a reply), so what is measured is the app. Each session is a
gradio_client session in a thread of this process, which shares the machine's cores with the app.

Figures per level: the time to first token the app adds to the endpoint's (a send to the first
reply text on the client, less the stand-in's 50 ms), the round trip of a rating (a store write through
the Gradio queue; both seen every 25 ms), the app's CPU (its process, user and system time over the wall time, 100% = one
core), and errors. The knee is the first level where the added time to first token's median passes
1 s or any send fails. Writes the section "Annotators per app process" of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics as st
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_serve import free_port  # noqa: E402 - importable once the path above is set
from soak import App  # noqa: E402

LEVELS = (32, 64, 128, 256)
CONNECT_EVERY = 0.1  # seconds between two sessions opening the page
STANDIN_TTFT, STANDIN_RATE, STANDIN_TOKENS = 0.05, 60.0, 200
THINK = (6.0, 14.0)  # seconds a person reads a reply before rating it and writing on (seeded per session)
POLL = 0.025  # seconds between looks at a streaming reply: the first token's time is known to this
KNEE_TTFT = 1.0  # seconds of added time to first token a person notices


def reply_text(bot) -> str:
    messages = bot.get("value", []) if isinstance(bot, dict) else bot or []
    if not messages or messages[-1].get("role") != "assistant":
        return ""
    content = messages[-1].get("content")
    text = content if isinstance(content, str) else "".join(p.get("text", "") for p in content or [])
    return "" if text in ("", "…") else text


def session(n: int, url: str, go: threading.Event, stop: threading.Event, out: dict, lock: threading.Lock) -> None:
    from gradio_client import Client

    rng = random.Random(n)
    time.sleep(CONNECT_EVERY * n)  # people open the page one after another, not in one burst
    try:
        client = Client(url, verbose=False)
    except Exception as e:  # noqa: BLE001 - counted: the app refused a session
        with lock:
            out["errors"].append(f"connect: {type(e).__name__}")
        return
    go.wait()
    time.sleep(rng.uniform(0, THINK[1]))  # sessions start spread out, as people do
    i = 0
    while not stop.is_set():
        i += 1
        start = time.perf_counter()
        first = None
        try:
            job = client.submit(
                f"session {n}, message {i}: tell me about lighthouses.", "dialogue", f"a{n}", api_name="/on_send"
            )
            deadline = start + 120
            while not job.done() and time.perf_counter() < deadline:  # polled: a Job's iterator spins at 1 ms
                if first is None:
                    outputs = job.outputs()
                    if outputs and reply_text(outputs[-1][0]):
                        first = time.perf_counter() - start
                time.sleep(POLL)
            text = reply_text(job.result(timeout=5)[0])
            if not text or "error" in text.lower()[:40]:
                raise RuntimeError(f"reply: {text[:60]!r}")
            done = time.perf_counter() - start
            time.sleep(rng.uniform(*THINK) / 2)
            t0 = time.perf_counter()
            client.predict(f"a{n}", api_name="/on_key_1")  # the key for `pass`: the focused, newest reply
            rated = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - counted, and the session goes on
            with lock:
                out["errors"].append(f"{type(e).__name__}: {str(e)[:80]}")
            time.sleep(1)
            continue
        with lock:
            out["ttft"].append(first if first is not None else done)
            out["reply"].append(done)
            out["rate"].append(rated)
        time.sleep(rng.uniform(*THINK) / 2)


def level(url: str, app_pid: int, sessions: int, seconds: float) -> dict:
    import psutil

    out: dict = {"ttft": [], "reply": [], "rate": [], "errors": []}
    go, stop, lock = threading.Event(), threading.Event(), threading.Lock()
    threads = [
        threading.Thread(target=session, args=(n, url, go, stop, out, lock), daemon=True) for n in range(sessions)
    ]
    for t in threads:
        t.start()
    time.sleep(CONNECT_EVERY * sessions + 5)  # the sessions connect (gradio_client fetches the app's config)
    app = psutil.Process(app_pid)
    cpu0, wall0 = sum(app.cpu_times()[:2]), time.monotonic()
    go.set()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    cpu = (sum(app.cpu_times()[:2]) - cpu0) / (time.monotonic() - wall0)
    added = sorted(max(0.0, x - STANDIN_TTFT) for x in out["ttft"])
    rate = sorted(out["rate"])

    def pct(xs: list[float], q: float) -> float | None:
        return xs[min(len(xs) - 1, int(len(xs) * q))] if xs else None

    return {
        "sessions": sessions,
        "seconds": seconds,
        "replies": len(out["ttft"]),
        "added_ttft_p50": pct(added, 0.5),
        "added_ttft_p95": pct(added, 0.95),
        "reply_p50": st.median(out["reply"]) if out["reply"] else None,
        "rate_p50": pct(rate, 0.5),
        "rate_p99": pct(rate, 0.99),
        "app_cpu": cpu,
        "errors": len(out["errors"]),
        "error_kinds": sorted(set(e.split(":")[0] for e in out["errors"]))[:5],
    }


def run(levels=LEVELS, seconds: float = 90.0) -> list[dict]:
    port = free_port()
    standin = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "standin.py"), "--port", str(port), "--ttft", str(STANDIN_TTFT),
         "--rate", str(STANDIN_RATE), "--tokens", str(STANDIN_TOKENS)],
    )  # fmt: skip
    results = []
    try:
        with tempfile.TemporaryDirectory() as d:
            home = Path(d)
            endpoint = f"http://127.0.0.1:{port}/v1"
            app = App(home, free_port())
            app.env["LIMACHAT_CHECKPOINTS"] = json.dumps(
                [
                    {"name": n, "model": n, "base_url": endpoint, "omit_params": ["generated_repetition_penalty"]}
                    for n in ("dialogue", "zero-shot")
                ]
            )
            app.start()
            try:
                for n in levels:
                    r = level(app.url, app.proc.pid, n, seconds)
                    print(json.dumps(r), flush=True)
                    results.append(r)
            finally:
                app.proc.terminate()
                app.proc.wait(timeout=60)
    finally:
        standin.terminate()
        standin.wait(timeout=30)
    return results


def knee(results: list[dict]) -> int | None:
    for r in results:
        if r["errors"] or (r["added_ttft_p50"] or 0) > KNEE_TTFT:
            return r["sessions"]
    return None


def section(results: list[dict]) -> list[str]:
    def s(x: float | None, unit: str = "s") -> str:
        return "-" if x is None else (f"{1000 * x:.0f} ms" if unit == "ms" else f"{x:.2f} s")

    k, last = knee(results), results[-1]["sessions"]
    lines = [
        "## Annotators per app process (the app alone, against a stand-in endpoint at GPU speed)",
        "",
        "| sessions | replies | added time to first token, median / p95 | rating round trip, median / p99 | app CPU | errors |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['sessions']} | {r['replies']} | {s(r['added_ttft_p50'], 'ms')} / {s(r['added_ttft_p95'], 'ms')} | "
            f"{s(r['rate_p50'], 'ms')} / {s(r['rate_p99'], 'ms')} | {100 * r['app_cpu']:.0f}% | {r['errors']}"
            f"{' (' + ', '.join(r['error_kinds']) + ')' if r['errors'] else ''} |"
        )
    lines += [
        "",
        f"Knee: {f'{k} sessions' if k else f'not reached at {last} sessions'} "
        f"(the first level whose added time to first token passes {KNEE_TTFT:.0f} s at the median, or with an error). "
        f"`make soak`, {results[0]['seconds']:.0f} s a level: each session a gradio_client session at a person's pace "
        f"(reads each reply {THINK[0]:.0f}-{THINK[1]:.0f} s, rates it with a key, writes on), against "
        f"benchmarks/standin.py ({STANDIN_TTFT * 1000:.0f} ms to the first token, {STANDIN_RATE:.0f} tokens/s per stream, "
        f"{STANDIN_TOKENS} tokens a reply). The sessions run in the benchmark's process on the same 2 cores as the app; "
        "100% CPU is one core.",
        "",
    ]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    ap.add_argument("--seconds", type=float, default=90.0, help="measured time a level")
    ap.add_argument("-o", "--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = ap.parse_args()
    results = run(args.levels, args.seconds)
    text = args.output.read_text() if args.output.exists() else "# Benchmarks\n"
    head, sep, rest = text.partition("## Annotators per app process")
    tail = rest[rest.find("\n## ") :] if sep and "\n## " in rest else ""
    args.output.write_text(head.rstrip("\n") + "\n\n" + "\n".join(section(results)) + tail)


if __name__ == "__main__":
    main()
