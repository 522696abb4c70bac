"""`make bench`: run every benchmark on this machine and write BENCHMARKS.md (medians with spread)."""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from datetime import date
from pathlib import Path

import bench_store
import bench_train

ROOT = Path(__file__).resolve().parents[1]


def store_section(writer_runs: int, seconds: float, runs: int) -> list[str]:
    rows = []
    with tempfile.TemporaryDirectory() as d:
        results = [bench_store.concurrent_writers(Path(d) / f"w{i}.db", 64, seconds) for i in range(writer_runs)]
        for r in results:
            print(f"  writers: {r}")
        p50 = [r["p50_ms"] for r in results]
        p99 = [r["p99_ms"] for r in results]
        lost = sum(r["lost"] + r["errors"] for r in results)
        rate = [r["writes"] / r["seconds"] for r in results]
        rows += [
            f"| 64 writers, {seconds:.0f} s, no pauses: write latency p50 | {bench_store.spread(p50, unit='ms', digits=1)} | - |",
            f"| 64 writers: write latency p99 | {bench_store.spread(p99, unit='ms', digits=1)} | <= 25 ms |",
            f"| 64 writers: writes per second | {bench_store.spread(rate, unit='', digits=0)} | - |",
            f"| 64 writers: lost writes (all runs) | {lost} | 0 |",
        ]
        db = Path(d) / "100k.db"
        bench_store.generate(db)
        t = bench_store.export_and_report(db, runs)
        print(f"  100k: { {k: v for k, v in t.items()} }")
        rows += [
            f"| export --format messages --min-label pass, {t['turns']:,} turns | {bench_store.spread(t['export_messages'])} | <= 3 s |",
            f"| export --format sessions (full backup), {t['turns']:,} turns | {bench_store.spread(t['export_sessions'])} | - |",
            f"| report, {t['turns']:,} turns | {bench_store.spread(t['report'])} | <= 1 s |",
        ]
    return rows


def train_section(steps: int) -> list[str]:
    from limachat.serve.base import prepare_base

    home = Path(os.environ.get("LIMACHAT_HOME", ROOT / "data"))  # the base `make demo` converted
    base = prepare_base(home, None, progress=print).model
    t = bench_train.throughput(base, steps)
    print(f"  train: {t}")
    return [
        f"| LoRA r=8 step, raw PEFT forward+backward ({t['tokens_per_batch']} tokens, batch 4) | "
        f"{bench_store.spread(t['raw_tok_s'], unit='tokens/s', digits=0)} | - |",
        f"| LoRA r=8 step, TRL SFTTrainer as `limachat train` runs it, same batch | "
        f"{bench_store.spread(t['trainer_tok_s'], unit='tokens/s', digits=0)} | - |",
        f"| trainer / raw throughput (medians, one run) | {t['ratio']:.2f} | >= 0.80 |",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each concurrent-writers run")
    ap.add_argument("--writer-runs", type=int, default=3)
    ap.add_argument("--runs", type=int, default=5, help="repetitions of each timed operation")
    ap.add_argument("--train-steps", type=int, default=5, help="timed training steps per side")
    ap.add_argument("-o", "--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = ap.parse_args()
    print("store benchmarks ...")
    rows = store_section(args.writer_runs, args.seconds, args.runs)
    print("training benchmarks ...")
    train_rows = train_section(args.train_steps)
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` on {date.today().isoformat()}: {platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}. "
        "Each figure is the median with the (min-max) spread of the repeated runs.",
        "",
        "## Store (SQLite)",
        "",
        "| what | median (spread) | target |",
        "|---|---|---|",
        *rows,
        "",
        "The writers run in a closed loop with no pause between writes, 64 threads against one SQLite",
        "file: each writes a user turn, begins an assistant turn, saves a partial, finishes it and rates it.",
        "Every write that returned is checked to be in the database afterwards.",
        "",
        "## Training (CPU, SmolLM2-135M-Instruct, float32)",
        "",
        "| what | median (spread) | target |",
        "|---|---|---|",
        *train_rows,
        "",
        "Both sides train the same LoRA adapter on the same four median-length bundled examples; the",
        "trainer side counts whole optimizer steps (forward, backward, clipping, AdamW, scheduler).",
        "",
    ]
    args.output.write_text("\n".join(lines))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
