"""`make soak`: 32 chat streams through the real app (gradio_client) against the real vLLM, a SIGKILL
of the app in the middle, a restart, then the check: every user turn whose send was acknowledged is
stored, the replies the kill cut off are marked interrupted, no turn is left streaming, and
`PRAGMA integrity_check` is ok. Writes its figures to BENCHMARKS.md (section "Soak").

Each simulated user is a thread with its own gradio_client session, sending one message after
another at the default sampling (preset and reply length). A send counts as acknowledged when the
app streamed anything back for it: by then its user turn is in the database.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_serve import free_port, serving  # noqa: E402 - importable once the path above is set

from limachat.dialogues.store import INTERRUPTED  # noqa: E402 - after the path, with the others

HOME = Path(os.environ.get("LIMACHAT_HOME", ROOT / "data"))


class App:
    """`limachat app` on a fixed port over one home, restartable."""

    def __init__(self, home: Path, vllm_port: int):
        self.home, self.port = home, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LIMACHAT_")}
        self.env.update(
            LIMACHAT_HOME=str(home),
            LIMACHAT_SERVER__PORT=str(vllm_port),
            LIMACHAT_SERVER__BASE=str(HOME / "base" / "SmolLM2-135M-Instruct" / "model"),
            PYTHONUNBUFFERED="1",
        )
        self.proc = None

    def start(self) -> float:
        log = self.home / "app.log"
        before = log.read_text().count("app ready") if log.exists() else 0
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "limachat.cli", "app", "--port", str(self.port)],
            env=self.env,
            cwd=self.home,
            stdout=subprocess.DEVNULL,
            stderr=log.open("ab"),
        )
        while log.read_text().count("app ready") <= before:
            if self.proc.poll() is not None:
                raise RuntimeError(log.read_text()[-2000:])
            time.sleep(0.2)
        return time.monotonic() - started


def user(n: int, app: App, up: threading.Event, stop: threading.Event, stats: dict, lock: threading.Lock) -> None:
    from gradio_client import Client

    i = 0
    while not stop.is_set():
        up.wait()
        try:
            client = Client(app.url, verbose=False)
            while not stop.is_set():
                text = f"user {n}, message {i}: tell me one thing about lighthouse number {i}."
                i += 1
                job = client.submit(text, "dialogue", f"soak{n}", api_name="/on_send")
                acked = False
                with lock:
                    stats["live"] += 1
                    stats["held"] = max(stats["held"], stats["live"])
                try:
                    # Polled, not iterated: a Job's iterator spins forever when its app dies mid-stream.
                    deadline = time.monotonic() + 600
                    while not job.done() and time.monotonic() < deadline:
                        if not acked and job.outputs():
                            acked = True
                            with lock:
                                stats["acked"].append(text)
                        time.sleep(0.05)
                    if not acked and job.outputs():
                        acked = True
                        with lock:
                            stats["acked"].append(text)
                    job.result(timeout=1)
                    with lock:
                        stats["finished"] += 1
                finally:
                    with lock:
                        stats["live"] -= 1
        except Exception as e:  # noqa: BLE001 - the app was killed under us: wait for it to come back
            with lock:
                stats["broken"] += 1
                stats["errors"].add(type(e).__name__)
            time.sleep(0.5)


def soak(streams: int, seconds: float) -> dict:
    with serving(HOME) as (url, _), tempfile.TemporaryDirectory() as d:
        home = Path(d)
        shutil.copy(HOME / "server.key", home / "server.key")  # the app reads the server's key in its home
        app = App(home, int(url.rsplit(":", 1)[1].split("/")[0]))
        app.start()
        up, stop, lock = threading.Event(), threading.Event(), threading.Lock()
        stats = {"live": 0, "held": 0, "acked": [], "finished": 0, "broken": 0, "errors": set()}
        threads = [
            threading.Thread(target=user, args=(n, app, up, stop, stats, lock), daemon=True) for n in range(streams)
        ]
        up.set()
        for t in threads:
            t.start()
        time.sleep(seconds / 2)
        streaming_at_kill = _count(home, "select count(*) from turns where status = 'streaming'")
        up.clear()
        app.proc.send_signal(signal.SIGKILL)  # mid-stream: replies are streaming now
        app.proc.wait()
        restart = app.start()
        up.set()
        time.sleep(seconds / 2)
        stop.set()  # no new sends; the ones in flight finish
        for t in threads:
            t.join(timeout=600)
        app.proc.send_signal(signal.SIGINT)
        app.proc.wait(timeout=60)
        db = home / "limachat.db"
        conn = sqlite3.connect(db)
        stored = {r[0] for r in conn.execute("select content from turns where role = 'user'")}
        return {
            "streams": streams,
            "seconds": seconds,
            "held": stats["held"],
            "user_turns": len(stored),
            "assistant_turns": _count(home, "select count(*) from turns where role = 'assistant'"),
            "acked": len(stats["acked"]),
            "lost": len([t for t in stats["acked"] if t not in stored]),
            "streaming_at_kill": streaming_at_kill,
            "interrupted": _count(home, "select count(*) from turns where error = ?", INTERRUPTED),
            "left_streaming": _count(home, "select count(*) from turns where status = 'streaming'"),
            "integrity": conn.execute("pragma integrity_check").fetchone()[0],
            "restart_s": restart,
            "ok_replies": _count(home, "select count(*) from turns where role = 'assistant' and status = 'ok'"),
            "broken_sends": stats["broken"],
            "client_errors": sorted(stats["errors"]),
        }


def _count(home: Path, sql: str, *params) -> int:
    conn = sqlite3.connect(home / "limachat.db")
    try:
        return conn.execute(sql, params).fetchone()[0]
    finally:
        conn.close()


def section(r: dict) -> list[str]:
    return [
        "## Soak (32 chat streams through the app, SIGKILL of the app half-way, restart)",
        "",
        "| what | figure | target |",
        "|---|---|---|",
        f"| concurrent streams held | {r['held']} of {r['streams']} | {r['streams']} |",
        f"| user turns acknowledged / stored | {r['acked']} / {r['user_turns']} | - |",
        f"| acknowledged user turns lost | {r['lost']} | 0 |",
        f"| assistant turns written (ok) | {r['assistant_turns']} ({r['ok_replies']}) | - |",
        f"| replies streaming at the kill / marked interrupted after the restart | {r['streaming_at_kill']} / {r['interrupted']} | equal |",
        f"| turns left `streaming` at the end | {r['left_streaming']} | 0 |",
        f"| `PRAGMA integrity_check` | {r['integrity']} | ok |",
        f'| restart: `limachat app` to "app ready" | {r["restart_s"]:.1f} s | - |',
        "",
        f"`make soak`: {r['seconds']:.0f} s of sends at the default sampling (preset `focused`, up to 512 tokens a reply) "
        "against `limachat serve` with the demo adapters, one gradio_client session per stream; the app gets SIGKILL "
        f"half-way and is started again on the same port. Sends the kill broke: {r['broken_sends']} "
        f"({', '.join(r['client_errors']) or 'none'}); their user turns are counted above when they were acknowledged.",
        "",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=240.0, help="sending time, half before the kill, half after")
    ap.add_argument("-o", "--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = ap.parse_args()
    r = soak(args.streams, args.seconds)
    print(r)
    text = args.output.read_text() if args.output.exists() else "# Benchmarks\n"
    head, sep, rest = text.partition("## Soak")
    tail = rest[rest.find("\n## ") :] if sep and "\n## " in rest else ""
    args.output.write_text(head.rstrip() + "\n\n" + "\n".join(section(r)) + tail)
    print(f"wrote {args.output}")
    if r["lost"] or r["left_streaming"] or r["integrity"] != "ok":
        sys.exit(1)


if __name__ == "__main__":
    main()
