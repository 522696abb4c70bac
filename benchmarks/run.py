"""`make bench`: run every benchmark on this machine and write BENCHMARKS.md (medians with spread)."""

from __future__ import annotations

import argparse
import os
import platform
import statistics as st
import sys
import tempfile
from datetime import date
from pathlib import Path

import bench_ablate
import bench_app
import bench_curate
import bench_firstrun
import bench_followups
import bench_mtbench
import bench_presets
import bench_serve
import bench_store
import bench_train

ROOT = Path(__file__).resolve().parents[1]
HOME = Path(os.environ.get("LIMACHAT_HOME", ROOT / "data"))  # the base and adapters `make demo` prepared


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

    base = prepare_base(HOME, None, progress=print).model
    t = bench_train.throughput(base, steps)
    print(f"  train: {t}")
    return [
        f"| LoRA r=8 step, raw PEFT forward+backward ({t['tokens_per_batch']} tokens, batch 4) | "
        f"{bench_store.spread(t['raw_tok_s'], unit='tokens/s', digits=0)} | - |",
        f"| LoRA r=8 step, TRL SFTTrainer as `limachat train` runs it, same batch | "
        f"{bench_store.spread(t['trainer_tok_s'], unit='tokens/s', digits=0)} | - |",
        f"| trainer / raw throughput (medians, one run) | {t['ratio']:.2f} | >= 0.80 |",
    ]


def app_section(rounds: int) -> list[str]:
    with bench_serve.serving(HOME) as (url, _):
        c = bench_app.compare_vs_single(url, rounds=rounds)
        levels = bench_app.streams_vs_direct(url, rounds=max(3, rounds // 2))
        page = bench_app.in_browser(url, HOME, rounds=max(3, rounds // 2))
    rows = [
        f"| single turn through the chat handler, 48 tokens | {bench_store.spread(c['single'])} | - |",
        f"| compare turn (both checkpoints at once), 48 tokens each | {bench_store.spread(c['compare'])} | - |",
        f"| compare / single wall time (medians, one run) | {c['ratio']:.2f} | <= 1.2 (sequential: 2.0) |",
    ]
    for n, runs in levels.items():
        app_tok = [r["tok_s"] for r in runs["app"]]
        dir_tok = [r["tok_s"] for r in runs["direct"]]
        app_ttft = [1000 * r["ttft"] for r in runs["app"]]
        dir_ttft = [1000 * r["ttft"] for r in runs["direct"]]
        rows += [
            f"| {n} stream{'s' if n > 1 else ''}: tokens/s, app path | {bench_store.spread(app_tok, unit='tokens/s', digits=1)} | - |",
            f"| {n} stream{'s' if n > 1 else ''}: tokens/s, direct client | {bench_store.spread(dir_tok, unit='tokens/s', digits=1)} | - |",
            f"| {n} stream{'s' if n > 1 else ''}: app / direct tokens/s (medians) | {st.median(app_tok) / st.median(dir_tok):.2f} | >= 0.97 |",
            f"| {n} stream{'s' if n > 1 else ''}: time to first token, app / direct | {bench_store.spread(app_ttft, unit='ms', digits=0)} / "
            f"{bench_store.spread(dir_ttft, unit='ms', digits=0)} | - |",
            f"| {n} stream{'s' if n > 1 else ''}: added time to first token (medians) | {st.median(app_ttft) - st.median(dir_ttft):+.0f} ms | <= 20 ms |",
        ]
    what = "1 stream, 256 tokens, a reply sent from the page in Chromium (same cores)"
    rows += [
        f"| {what}: tokens/s as the app read it | {bench_store.spread(page['page'], unit='tokens/s', digits=1)} | - |",
        f"| {what}: tokens/s, direct client between them | {bench_store.spread(page['direct'], unit='tokens/s', digits=1)} | - |",
        f"| {what}: page / direct tokens/s (medians) | {st.median(page['page']) / st.median(page['direct']):.2f} | - |",
    ]
    return rows


def serve_section(runs: int) -> list[str]:
    return bench_serve.section(HOME, runs, bench_store.spread)


def ranks_section(runs: int) -> list[str]:
    return bench_serve.ranks(HOME, runs, bench_store.spread)


def sampling_section(seeds: int) -> list[str]:
    import asyncio

    rows = []
    with bench_serve.serving(HOME) as (url, _):
        for checkpoint in ("zero-shot", "dialogue"):
            results = asyncio.run(bench_presets.measure(url, checkpoint, seeds))
            rows += [row.replace("| ", f"| {checkpoint}, ", 1) for row in bench_presets.rows(results)]
    return rows


def followups_section(seed: int) -> list[str]:
    with bench_serve.serving(HOME) as (url, _):
        _, rows = bench_followups.measure(url, seed)
    return rows


def curate_section(runs: int, chains: int) -> list[str]:
    from limachat.settings import Curate

    default = Curate().embedding_max_tokens
    rows = []
    for tokens in (default, 128):
        r = bench_curate.select_runs(chains, 500, runs, tokens)
        embed = [x.seconds["embed"] for x in r["results"]]
        rate = [chains / e for e in embed]
        last = r["results"][-1]
        rows += [
            f"| select {chains:,} chains, {tokens} word pieces each, nothing cached (model load included) | "
            f"{bench_store.spread(r['cold'])} | <= 60 s |",
            f"| &nbsp; of which embedding | {bench_store.spread(embed)} ({bench_store.spread(rate, unit='chains/s', digits=0)}) | - |",
            f"| select {chains:,} chains, {tokens} word pieces, all cached | {bench_store.spread(r['warm'])} | - |",
            f"| &nbsp; coverage of 500 chosen: k-center / random (5 seeds) | {last.coverage:.3f} / {last.random_mean:.3f} ± "
            f"{last.random_sd:.3f} | lower than random |",
        ]
    with bench_serve.serving(HOME) as (url, _):
        j = bench_curate.judge_runs(url, runs, {1: 6, 8: 24})
    for c in (1, 8):
        rows += [
            f"| judge label, concurrency {c}: turns/s | {bench_store.spread(j[c]['rate'], unit='turns/s', digits=2)} | - |",
            f"| &nbsp; prompt / generated tokens per judged turn | {st.median(j[c]['prompt']):.0f} / "
            f"{st.median(j[c]['generated']):.0f} | - |",
        ]
    rows.append(
        f"| concurrency 8 / 1 (medians, one run) | {st.median(j[8]['rate']) / st.median(j[1]['rate']):.1f} | >= 3 |"
    )
    return rows


def ablate_section() -> list[str]:
    r = bench_ablate.run(HOME)
    e = r["effects"]

    def figure(group: str, measure: str, scale: float, digits: int) -> str:
        x = e[group][measure]
        return f"{x['value'] * scale:+.{digits}f} [{x['low'] * scale:+.{digits}f}, {x['high'] * scale:+.{digits}f}]"

    return [
        f"| `ablate` of 96 chains in two groups, leave-one-out, 3 variants of {r['steps']} steps each | {r['seconds'] / 60:.1f} min | - |",
        f"| held-out loss effect: gina / nico (95% interval) | {figure('gina', 'loss', 1, 3)} / {figure('nico', 'loss', 1, 3)} | gina > 0 > nico |",
        f"| excellent share effect, points: gina / nico (95% interval) | {figure('gina', 'excellent', 100, 0)} / "
        f"{figure('nico', 'excellent', 100, 0)} | gina > nico |",
        f"| the report ranks gina above nico | {'yes' if r['ranked'] else 'no'} | yes |",
    ]


def mtbench_section() -> list[str]:
    with bench_serve.serving(HOME) as (url, _):
        r = bench_mtbench.run(HOME, url)
    print(f"  mtbench: { {k: v for k, v in r.items() if k not in ('by', 'gaps')} }")
    total = r["answer_s"] + r["judge_s"]
    rows = [
        f"| answer: {r['questions']} questions x 2 checkpoints x 2 turns ({r['replies']} replies) | {r['answer_s'] / 60:.1f} min | - |",
        f"| &nbsp; generated tokens, aggregate rate | {r['tokens']:,} tokens, {r['tokens'] / r['answer_s']:.1f} tokens/s "
        f"(longest reply {r['max_tokens']}, {r['at_limit']} at the 1024 limit) | - |",
        f"| judge single: {r['graded']} grades by the local `base` | {r['judge_s'] / 60:.1f} min ({r['unparsed']} with score -1: {r['too_long']} longer than the judge's 2048-token context, the rest without a rating) | - |",
        f"| answer + judge | {total / 60:.1f} min | <= 30 min |",
    ]
    for ck, by in r["by"].items():
        rows.append(
            f"| {ck}: mean grade turn 1 / turn 2 / overall (95% interval) | "
            + " / ".join(f"{e.value:.2f} [{e.low:.2f}, {e.high:.2f}]" for e in by.values())
            + " | - |"
        )
    for first, other, turn, e, n in r["gaps"]:
        rows.append(
            f"| gap {other} − {first}, turn {turn} ({n} questions) | {e.value:+.2f} [{e.low:+.2f}, {e.high:+.2f}] | - |"
        )
    return rows


def tests_section() -> list[str]:
    """`make test` and `make test-fast` on a clean clone of this repository's HEAD, as CI runs them."""
    import re
    import subprocess
    import time

    rows = []
    had_chromium = Path("/usr/bin/chromium").exists()  # else `make test` installs it with apt, as on CI's machine
    with tempfile.TemporaryDirectory(prefix="limachat-clone-") as tmp:
        subprocess.run(["git", "clone", "-q", str(ROOT), tmp], check=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LIMACHAT_", "VIRTUAL_ENV"))}
        for target, what in (("test", "the whole suite, set-up included"), ("test-fast", "the fast tier")):
            start = time.monotonic()
            done = subprocess.run(["make", target], cwd=tmp, env=env, capture_output=True, text=True)
            wall = time.monotonic() - start
            log = Path(tempfile.gettempdir()) / f"limachat-make-{target}.log"
            log.write_text(done.stdout + done.stderr)
            summary = re.findall(r"(\d+ passed[^\n]*?) in ([\d.]+)s", done.stdout)  # with or without -q's borders
            if done.returncode or not summary:
                raise SystemExit(f"make {target} failed in the clone (its output: {log}):\n{done.stdout[-3000:]}")
            counts, seconds = summary[-1][0].split(",")[0], float(summary[-1][1])
            print(f"  make {target}: {counts}, pytest {seconds:.0f} s, {wall:.0f} s in all")
            slowest = done.stdout[done.stdout.find("slowest") :].splitlines()
            print("\n".join("    " + line for line in slowest if re.match(r"[\d.]+s ", line)))
            target_row = "<= 15 min" if target == "test" else "<= 90 s"
            rows += [
                f"| `make {target}` ({what}): pytest, {counts} | {_duration(seconds)} | {target_row} |",
                f"| `make {target}`: command to prompt | {_duration(wall)} | - |",
            ]
    rows.insert(
        2, f"| `make test`: chromium installed by it (apt) | {'no, already there' if had_chromium else 'yes'} | - |"
    )
    return rows


def firstrun_section() -> list[str]:
    """A newcomer's first `make demo` on a clean clone with empty caches, phase by phase; then a second start."""
    r = bench_firstrun.first_run(bench_serve.free_port)
    print(f"  {r}")
    rows, began = [], 0.0
    for phase, end in r["ends"].items():
        rows.append(f"| {phase} | {_duration(end - began)} | - |")
        began = end
    total = list(r["ends"].values())
    rows += [
        f"| **command to both demo checkpoints answering** | **{_duration(total[-1])}** | <= 10 min |",
        f"| first start, set-up excluded: `limachat demo` to vLLM ready (conversion, adapters, vLLM) | "
        f"{_duration(total[3] - total[0])} | <= 120 s |",
        f"| first start's vLLM, by phase (uncompiled: vLLM's cache is empty) | {r['first_breakdown']} | - |",
        f"| the first start's background compile done, after the command | {_duration(r['compiled_after'])} | - |",
        "| decode on the first start while it compiles in the background (128-token replies) | "
        f"{bench_store.spread(r['decode_during'], unit='tokens/s', digits=1)} | - |",
        "| the same server once the compile is done | "
        f"{bench_store.spread(r['decode_alone'], unit='tokens/s', digits=1)} | - |",
        f"| second start (`limachat serve` in the same home): ready after | {_duration(r['second'])} | <= 45 s |",
        f"| second start's vLLM, by phase | {r['second_breakdown']} | - |",
    ]
    return rows


def adapters_section() -> list[str]:
    """`make adapters` into a scratch folder: the demo adapters trained from scratch against the shipped ones."""
    import subprocess
    import time

    from limachat.layout import VARIANTS, training_record
    from limachat.train.shipped import SHIPPED, ship

    rows = []
    with tempfile.TemporaryDirectory(prefix="limachat-adapters-") as tmp:
        home, target = Path(tmp) / "home", Path(tmp) / "adapters"
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("LIMACHAT_")}, "LIMACHAT_HOME": str(home)}
        start = time.monotonic()
        subprocess.run([sys.executable, "-m", "limachat.cli", "train", "--force"], env=env, check=True)
        wall = time.monotonic() - start
        ship(home, target)
        for variant in VARIANTS:
            old, new = training_record(SHIPPED / variant), training_record(target / variant)
            print(f"  {variant}: shipped {old['heldout']['loss']}, rebuilt {new['heldout']['loss']}")
            rows.append(
                f"| {variant}: held-out loss, shipped / rebuilt (base {new['heldout']['base_loss']:.4f}) | "
                f"{old['heldout']['loss']:.4f} / {new['heldout']['loss']:.4f} | equal within 0.01 |"
            )
            rows.append(f"| {variant}: training, {new['steps']} steps | {_duration(new['seconds'])} | - |")
        rows.append(f"| `limachat train --force`, both (conversion of the base included) | {_duration(wall)} | - |")
    return rows


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{int(seconds // 60)} min {round(seconds % 60):02d} s"


SECTIONS = {
    "tests": (
        "## Tests (a clean clone of HEAD, one run each)",
        [
            "`git clone` of this repository into a temporary folder, then `make test` there (a fresh `.venv`:",
            "pip installs everything, apt installs chromium where the machine lacks it), then `make test-fast`",
            "in the same clone. One run each: the suite takes too long to repeat. The pytest figure is pytest's own;",
            "command to prompt adds the set-up (`make test`) and ruff.",
        ],
    ),
    "firstrun": (
        "## A newcomer's first `make demo` (a clean clone, empty caches, one run)",
        [
            "`git clone` of HEAD into a temporary folder, then `make demo` there with no pip cache (pip fetches",
            "every package from the indexes this machine is configured with, a local wheel folder among them),",
            "vLLM's and torch's caches in an empty folder, and a fresh data home. Each phase ends at the line",
            "`make demo` prints for it; the",
            "last is one short reply from each demo checkpoint through the server the app uses. vLLM's phases",
            "come from its ready line (serve/start.py reads them off vLLM's log). The first start serves",
            "uncompiled and compiles in the background (serve/precompile.py); the second start, `limachat serve`",
            "in the same home afterwards, loads the compiled model from vLLM's cache. Decode: three greedy",
            "128-token replies from `dialogue` right after the first replies, while the compile runs, then three",
            "once it is done, on the same uncompiled server, each timed as the serving section times one stream",
            "(median, with the range).",
        ],
    ),
    "adapters": (
        "## Demo adapters (a rebuild against the shipped ones, one run)",
        [
            "`limachat train --force` in a scratch home on the bundled base, the bundled data and the default",
            "recipe (what `make adapters` runs), against the adapters that ship in train/adapters/. Held-out loss:",
            "the loss per token of the two held-out chains' replies from turn 2 on, as `limachat train` records it.",
        ],
    ),
    "store": (
        "## Store (SQLite)",
        [
            "The writers run in a closed loop with no pause between writes, 64 threads against one SQLite",
            "file: each writes a user turn, begins an assistant turn, saves a partial, finishes it and rates it.",
            "Every write that returned is checked to be in the database afterwards. Writes go through the store's",
            "one writer thread: the writes that queue while one transaction commits share the next (group commit),",
            "each in its own savepoint, and each is acknowledged only after its COMMIT.",
        ],
    ),
    "train": (
        "## Training (CPU, SmolLM2-135M-Instruct, float32)",
        [
            "Both sides train the same LoRA adapter on the same four median-length bundled examples; the",
            "trainer side counts whole optimizer steps (forward, backward, clipping, AdamW, scheduler).",
        ],
    ),
    "serve": (
        "## Serving (CPU, SmolLM2-135M-Instruct, 128 greedy tokens per reply)",
        [
            "One prompt, every reply exactly 128 greedy tokens (`ignore_eos`), medians of 5, all in one run. vLLM",
            "is `limachat serve` with the demo adapters (float32, compiled, limachat's fused CPU LoRA path, only",
            "the 15 layers the adapters touch wrapped) and `dialogue` in every request; no LoRA is the same vLLM",
            "started without `--enable-lora`. llama.cpp is the `xllamacpp` wheel (2 threads, 4 slots) with no",
            "adapter, a yardstick, not an engine limachat ships. Single stream: (tokens - 1) / (last - first token",
            "time); 4 streams: all tokens / wall time. Ready: from start to `vLLM ready` (LoRA) or the first",
            "answer of `/v1/models`. Scoring: a 5-turn `dialogue` conversation, 128-token replies, 5 rounds; each",
            "odd turn's reply scored alone (cached, then whole), each even turn's score started together with",
            "the next turn's request, as the app does. A score's parts: single requests of a 16- and a 128-token",
            "prompt (a fresh first token each, so nothing comes from the prefix cache), and a /tokenize round trip.",
            "A step's parts: outside the server, every linear layer of the base at one token (each layer's four",
            "projections and the logits) through the function vLLM's CPU layers call (`dispatch_cpu_unquantized_gemm`:",
            "oneDNN, float32), and the same weights read once by a plain sum, 20 times each in a process of 2 OpenMP",
            "threads bound one per core. At one token a step reads every weight once, so the memory speed is its floor.",
        ],
    ),
    "ranks": (
        "## Serving across ranks (CPU, 2 cores, `dialogue`, 128 greedy tokens per reply)",
        [
            "`limachat serve` with `server.data_parallel = 2` or `server.pipeline_parallel = 2` against one rank,",
            "each compiled as `serve` runs it, each rank bound to one of the 2 cores; medians of 3 per level, all in",
            "one run. Two ranks on two cores split the cores one rank had: data parallel runs two engines of one",
            "core each (a single stream gets one core), pipeline parallel passes each token's activations from",
            "stage to stage. What they show on this machine is that the paths work and what they cost; on GPUs",
            "each rank brings its own device.",
        ],
    ),
    "sampling": (
        "## Sampling presets (5-turn conversations, bundled model, demo adapters)",
        [
            "Per preset and checkpoint: 5-turn conversations about starting to run (benchmarks/bench_presets.py),",
            "seeds 0 to N-1 (`--seeds`, default 2), up to 512 tokens a reply, context 2048 (a conversation that",
            "outgrows it ends early). Fluency does not catch a reply that loops (its NLL falls); `stopped` does.",
            "Stopped: replies that ended by themselves. Run > 30: replies with more than 30 characters without",
            "whitespace (words run together). Fluency: the base's mean NLL per token of the reply in its",
            "conversation (lower is better); at or above 3.5 counts as word salad.",
        ],
    ),
    "followups": (
        "## Follow-ups (held-out conversations, bundled model, demo adapters)",
        [
            "The held-out conversations (dialogues/data/followups.jsonl: 10 conversations of 3-4 user turns, 22",
            "follow-ups, never trained on) at the default preset (`focused`: temperature 0.3, top-p 0.9, 512 tokens",
            "a reply, seed 7) with LIMA's penalty at 1.2 (the paper's) and 1.1, in each scope: `reply` counts the",
            "reply's own tokens, `conversation` also the earlier replies' (never the user's). Every checkpoint and",
            "scope of one penalty run at once (60 conversations), as several users would chat",
            "(benchmarks/bench_followups.py). A follow-up is repeated when 50% or more of its word trigrams",
            "already appeared in an earlier reply of its conversation (dialogues/repeats.py). Fluency: the base's",
            "mean NLL per token of each reply (lower is better; 3.5 and up is word salad), median and maximum.",
        ],
    ),
    "app": (
        "## App (chat and compare handlers over vLLM on CPU, as `limachat serve` runs it, float32, LoRA)",
        [
            "Every reply is exactly 48 tokens (`ignore_eos`), so the sides compare like for like. The app path is",
            "the handler a Gradio event calls: session and user turn saved, the reply streamed through the",
            "client with partial saves and the view rebuilt per piece, the finished turn written. The direct",
            "client is one httpx SSE stream. Streams run concurrently with asyncio; rounds alternate the sides.",
            "The page rows: `limachat app` and Chromium on the same 2 cores as vLLM, a chat turn of 256 tokens",
            "sent from the page (a new session each, after a warm-up), its rate from the stored turn's timings;",
            "the direct client sends the same prompt for the same length between them. What the page costs",
            "(the app's updates, the browser's rendering) is CPU time vLLM's decode does not get.",
        ],
    ),
    "curate": (
        "## Curation (select: all-MiniLM-L6-v2 on CPU; judge: the local `base`, label mode)",
        [
            "Select: seeded synthetic chains (benchmarks/bench_curate.py; 1-3 exchanges, ~400 word pieces each),",
            "each run on a fresh copy of the database, so every chain is embedded; then again with the cache full.",
            "The embedder reads N word pieces of a chain, each turn cut to its share (`curate.embedding_max_tokens`,",
            "default 64), and 128 for comparison.",
            "Judge: label mode with the default judge (the local server's `base`, JSON-schema answers, 256 tokens",
            "at most), 6 turns a run at concurrency 1 and 24 at concurrency 8, each run on synthetic chains of its",
            "own (no run finds another's prompts in vLLM's prefix cache). Tokens per turn from vLLM's /metrics.",
        ],
    ),
    "ablate": (
        "## Ablation (bundled model, synthetic groups with a known effect, one run)",
        [
            "`limachat ablate` on the running `limachat serve` (benchmarks/bench_ablate.py): gina's 48 chains",
            "answer in a habit the held-out chains share, nico's 48 answer the same questions in word salad. Each",
            "variant trains the steps of one epoch of the largest, replays 4 scripted conversations (32-token",
            "replies, seeded) and is labelled by a rule-following stand-in for a capable judge (none runs on this",
            "machine). The tests run the same loop on the tiny model, where no habit is learnt in an epoch and",
            "only the held-out loss can rank the groups.",
        ],
    ),
    "mtbench": (
        "## Bench (MT-Bench-sized: answers and single grades, one run)",
        [
            "`limachat bench answer` with both demo checkpoints at the defaults (FastChat's temperature per",
            "category, up to 1024 new tokens a reply, concurrency 8), then `limachat bench judge --mode single` with the",
            "default judge (the local server's `base`, limachat's prompts, 256 tokens, the verdict constrained to end",
            "the judgment), as a user runs them, on one `limachat serve` (benchmarks/bench_mtbench.py). The questions:",
            "the user's MT-Bench copy when LIMACHAT_MTBENCH_QUESTIONS names it, else benchmarks/data/bench-questions.jsonl",
            "(80 two-turn questions, 10 per MT-Bench category, written for this project). A 135M judge's grades say",
            "little about the answers: they measure the pipeline, not the models.",
        ],
    ),
}


# A one-run section says its own date: `--only` reruns some sections and keeps the others as they were.
ONE_RUN = [f"| what | figure (one run, {date.today().isoformat()}) | target |", "|---|---|---|"]
HEADERS = {
    "mtbench": ONE_RUN,
    "ablate": ONE_RUN,
    "tests": ONE_RUN,
    "adapters": ONE_RUN,
    "firstrun": ONE_RUN,
    "followups": bench_followups.HEADER,
    "sampling": [
        "| checkpoint, preset | replies | stopped | run > 30 | median tokens | fluency, median (range) | fluency >= 3.5 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ],
}


def _existing(path: Path) -> dict[str, list[str]]:
    """The sections of an earlier BENCHMARKS.md, by heading, to keep those not re-run."""
    out: dict[str, list[str]] = {}
    if path.exists():
        current = None
        for line in path.read_text().splitlines():
            if line.startswith("## "):
                current = line
                out[current] = []
            elif current:
                out[current].append(line)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each concurrent-writers run")
    ap.add_argument("--writer-runs", type=int, default=3)
    ap.add_argument("--runs", type=int, default=5, help="repetitions of each timed operation")
    ap.add_argument("--train-steps", type=int, default=5, help="timed training steps per side")
    ap.add_argument("--seeds", type=int, default=2, help="conversations per sampling preset and checkpoint")
    ap.add_argument("--chains", type=int, default=10_000, help="synthetic chains `select` chooses from")
    ap.add_argument(
        "--only",
        choices=sorted(SECTIONS),
        action="append",
        help="run only this section (repeatable); the others are kept from the existing file",
    )
    ap.add_argument("-o", "--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = ap.parse_args()
    run = {
        "store": lambda: store_section(args.writer_runs, args.seconds, args.runs),
        "train": lambda: train_section(args.train_steps),
        "app": lambda: app_section(args.runs),
        "serve": lambda: serve_section(args.runs),
        "ranks": lambda: ranks_section(args.runs),
        "sampling": lambda: sampling_section(args.seeds),
        "followups": lambda: followups_section(7),
        "curate": lambda: curate_section(min(args.runs, 3), args.chains),
        "mtbench": mtbench_section,
        "ablate": ablate_section,
        "tests": tests_section,
        "adapters": adapters_section,
        "firstrun": firstrun_section,
    }
    old = _existing(args.output)
    body: list[str] = []
    for key, (heading, notes) in SECTIONS.items():
        if args.only and key not in args.only and heading in old:
            body += [heading, *old[heading]]
            continue
        print(f"{key} benchmarks ...")
        rows = run[key]()
        header = HEADERS.get(key, ["| what | median (spread) | target |", "|---|---|---|"])
        body += [heading, "", *header, *rows, "", *notes, ""]
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` on {date.today().isoformat()}: {platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}. "
        "Each figure is the median with the (min-max) spread of the repeated runs.",
        "",
        *body,
    ]
    owned = {heading for heading, _ in SECTIONS.values()}
    for heading, rest in old.items():  # sections other commands write (`make soak`) stay as they are
        if heading not in owned:
            lines += [heading, *rest]
    args.output.write_text("\n".join(lines))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
