"""Store benchmarks: 64 concurrent writers, and export / report over a 100,000-turn database."""

from __future__ import annotations

import random
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path

from limachat.dialogues import report as rep
from limachat.dialogues.export import Filters, export
from limachat.dialogues.store import LABELS, Store, new_id, now


def concurrent_writers(path: Path, writers: int = 64, seconds: float = 30.0) -> dict:
    """Each writer thread plays one user: a user turn, an assistant turn begun, streamed into
    (one partial save), finished, then rated. Every write call is timed; afterwards every write
    that returned must be in the database."""
    store = Store(path)
    latencies: list[list[float]] = [[] for _ in range(writers)]
    done: list[list[str]] = [[] for _ in range(writers)]
    errors: list[BaseException] = []
    stop = time.monotonic() + seconds
    start_gate = threading.Barrier(writers)

    def timed(n: int, fn, *args, **kw):
        t0 = time.perf_counter()
        out = fn(*args, **kw)
        latencies[n].append(time.perf_counter() - t0)
        return out

    def writer(n: int) -> None:
        try:
            sid = timed(n, store.start_session, "chat", annotator=f"w{n}")
            parent = None
            start_gate.wait()
            while time.monotonic() < stop:
                u = timed(n, store.add_user_turn, sid, "a question " * 20, parent_id=parent)
                a = timed(n, store.begin_assistant_turn, sid, u, checkpoint="dialogue", params={"temperature": 0.7})
                timed(n, store.save_partial, a, "partial " * 30)
                timed(
                    n,
                    store.finish_assistant_turn,
                    a,
                    "an answer " * 60,
                    prompt_tokens=100,
                    completion_tokens=120,
                    ttft=0.05,
                    latency=2.0,
                )
                timed(n, store.rate, a, f"w{n}", random.choice(LABELS))
                done[n] += [u, a]
                parent = a
        except BaseException as e:  # noqa: BLE001 - reported as lost writes
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    all_lat = sorted(x for per in latencies for x in per)
    written = {tid for per in done for tid in per}
    conn = sqlite3.connect(path)
    present = {r[0] for r in conn.execute("select id from turns")}
    ratings = conn.execute("select count(*) from ratings").fetchone()[0]
    return {
        "writes": len(all_lat),
        "seconds": seconds,
        "errors": len(errors),
        "p50_ms": 1000 * all_lat[len(all_lat) // 2],
        "p99_ms": 1000 * all_lat[int(len(all_lat) * 0.99)],
        "lost": len(written - present) + (len(written) // 2 - ratings),
        "turns": len(present),
    }


def generate(path: Path, turns: int = 100_000, seed: int = 0) -> None:
    """A database shaped like real use: chat and compare sessions of 2-6 exchanges, every assistant
    turn rated (a quarter by two annotators), some regenerations, gold edits and verdicts."""
    rng = random.Random(seed)
    store = Store(path)
    sessions, rows, ratings, edits, verdicts = [], [], [], [], []
    text = "word " * 80
    while len(rows) < turns:
        sid = new_id()
        mode = rng.choice(["chat", "chat", "compare", "blind"])
        sessions.append({"id": sid, "created": now(), "mode": mode, "annotator": "ana", "closed": None})
        lanes = (
            [("a", "zero-shot"), ("b", "dialogue")]
            if mode != "chat"
            else [(None, rng.choice(["zero-shot", "dialogue"]))]
        )
        exchanges = rng.randint(2, 6)
        last = {}
        for lane, checkpoint in lanes:
            parent = None
            for x in range(1, exchanges + 1):
                u, a = new_id(), new_id()
                rows.append(
                    {
                        "id": u,
                        "session_id": sid,
                        "parent_id": parent,
                        "lane": lane,
                        "exchange": x,
                        "role": "user",
                        "content": text,
                        "status": "ok",
                        "created": now(),
                    }
                )
                rows.append(
                    {
                        "id": a,
                        "session_id": sid,
                        "parent_id": u,
                        "lane": lane,
                        "exchange": x,
                        "role": "assistant",
                        "content": text * 3,
                        "checkpoint": checkpoint,
                        "model": checkpoint,
                        "params": '{"temperature": 0.7}',
                        "prompt_tokens": 200 * x,
                        "completion_tokens": 240,
                        "ttft": 0.05,
                        "latency": 3.0,
                        "status": "ok",
                        "created": now(),
                    }
                )
                for who in ["ana", "ben"] if rng.random() < 0.25 else ["ana"]:
                    ratings.append(
                        {
                            "id": new_id(),
                            "turn_id": a,
                            "annotator": who,
                            "label": rng.choice(LABELS),
                            "created": now(),
                            "current": 1,
                        }
                    )
                if rng.random() < 0.05:
                    edits.append({"id": new_id(), "turn_id": a, "annotator": "ana", "content": text, "created": now()})
                last[lane] = last.get(lane, []) + [a]
                parent = a
        if mode != "chat":
            for a, b in zip(last["a"], last["b"]):
                verdicts.append(
                    {
                        "id": new_id(),
                        "session_id": sid,
                        "turn_a": a,
                        "turn_b": b,
                        "checkpoint_a": "zero-shot",
                        "checkpoint_b": "dialogue",
                        "verdict": rng.choice(["a", "b", "tie"]),
                        "annotator": "ana",
                        "created": now(),
                        "current": 1,
                    }
                )

    def insert(db) -> None:
        db["sessions"].insert_all(sessions)
        db["turns"].insert_all(rows, batch_size=2000)
        db["ratings"].insert_all(ratings, batch_size=2000)
        db["edits"].insert_all(edits)
        db["verdicts"].insert_all(verdicts)

    store.transaction(insert)
    store.close()
    sqlite3.connect(path).execute("analyze")


def timed_runs(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def export_and_report(path: Path, runs: int = 5) -> dict:
    store = Store(path)
    out = path.with_suffix(".export.jsonl")
    turns = store.counts()["turns"]
    return {
        "turns": turns,
        "export_messages": timed_runs(lambda: export(store, out, "messages", Filters(min_label="pass")), runs),
        "export_sessions": timed_runs(lambda: export(store, out, "sessions"), runs),
        "report": timed_runs(lambda: rep.build(store), runs),
    }


def spread(values: list[float], scale: float = 1.0, unit: str = "s", digits: int = 2) -> str:
    v = [x * scale for x in values]
    return f"{statistics.median(v):.{digits}f} {unit} ({min(v):.{digits}f}-{max(v):.{digits}f})"


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        print(concurrent_writers(Path(d) / "w.db", seconds=5))
        generate(Path(d) / "g.db")
        print({k: v for k, v in export_and_report(Path(d) / "g.db", runs=2).items()})
