"""MT-Bench-sized runs of `limachat bench`, as a user runs them: both demo checkpoints answer a full set of
two-turn questions at the defaults (FastChat's temperatures, up to 1024 new tokens, concurrency 8), then
the local `base` grades every reply (single mode, the defaults). The questions are the user's MT-Bench copy
when LIMACHAT_MTBENCH_QUESTIONS names one, else benchmarks/data/bench-questions.jsonl (80 two-turn questions,
10 in each of MT-Bench's 8 categories, written for this project)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

OWN = Path(__file__).parent / "data" / "bench-questions.jsonl"


def questions() -> Path:
    return Path(os.environ.get("LIMACHAT_MTBENCH_QUESTIONS") or OWN)


def _cli(home: Path, port: int, *args: str) -> tuple[float, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIMACHAT_")}
    env.update(LIMACHAT_HOME=str(home), LIMACHAT_SERVER__PORT=str(port))
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "limachat.cli", *args], env=env, capture_output=True, text=True)
    seconds = time.monotonic() - start
    if done.returncode:
        raise RuntimeError(f"limachat {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def run(server_home: Path, url: str) -> dict:
    """Answer and judge the whole set against the server at `url` (serving `server_home`'s adapters)."""
    from limachat.dialogues import bench, bench_report
    from limachat.dialogues.store import Store

    port = int(url.rsplit(":", 1)[1].split("/")[0])
    path = questions()
    home = server_home / "bench-mtbench"  # a fresh home each run, kept afterwards to look at (and resume)
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    shutil.copy(server_home / "server.key", home / "server.key")
    answer_s, answer_out = _cli(
        home, port, "bench", "answer", str(path), "--name", "mt", "--checkpoints", "zero-shot,dialogue"
    )
    judge_s, judge_out = _cli(home, port, "bench", "judge", "mt", "--mode", "single")
    store = Store(home / "limachat.db")
    found = bench.answers(store.bench_turns("mt"))
    tokens = [r["completion_tokens"] or 0 for a in found.values() for r in a.replies if r]
    report = bench_report.build(store, "mt")
    print(answer_out.strip(), judge_out.strip(), sep="\n")
    return {
        "questions": len(store.bench_questions("mt")),
        "source": path.name if path != OWN else "benchmarks/data/bench-questions.jsonl",
        "answer_s": answer_s,
        "judge_s": judge_s,
        "replies": len(tokens),
        "tokens": sum(tokens),
        "max_tokens": max(tokens),
        "at_limit": sum(t >= 1024 for t in tokens),
        "graded": report.grades.graded,
        "unparsed": report.grades.unparsed,
        "too_long": sum(j["judgment"].startswith("(not judged") for j in store.bench_judgments("mt", "single")),
        "by": {ck: {t: report.grades.by[ck][t] for t in (1, 2, 0)} for ck in report.checkpoints},
        "gaps": report.grades.gaps,
    }
