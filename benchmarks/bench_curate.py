"""Curation: how fast `limachat select` chooses from 10,000 chains (embeddings included), and how many
turns per second `limachat judge` labels on the local vLLM server at concurrency 1 and 8.

The synthetic chains are seeded: 1 to 3 exchanges, each question 12-30 words and each reply 50-150
words drawn from topic vocabularies, so their length in word pieces is near that of real chat turns
(about 400 per chain; the embedder reads the first `curate.embedding_max_tokens`).
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from pathlib import Path

TOPICS = {
    "cooking": "recipe oven flour butter garlic simmer boil roast season pan sauce onion pepper bake dough salt",
    "travel": "train ticket hotel passport luggage flight itinerary museum coast village map guide border visa",
    "fitness": "running stretch knee pace interval strength squat rest recovery heart rate marathon plan shoes",
    "coding": "python function error list loop class module test variable debug compile import string index",
    "money": "budget savings loan interest rent salary invest fund tax account expense pension credit debt",
    "garden": "soil seed tomato water sun compost prune root leaf pot frost weed mulch bloom harvest",
    "writing": "essay paragraph draft thesis argument outline edit sentence grammar reader tone style chapter",
    "music": "chord guitar scale practice rhythm melody tempo piano note song lesson tune key beat",
    "health": "sleep stress diet doctor symptom vitamin water habit routine posture headache rest calm",
    "history": "empire war treaty century king revolution trade colony republic archive battle dynasty",
}
GLUE = "the a to of and in for with is it you your this that can on be how what should about when".split()


def synthetic_chains(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    topics = list(TOPICS.values())

    def text(words: str, lo: int, hi: int) -> str:
        vocab = words.split()
        return " ".join(
            rng.choice(vocab) if rng.random() < 0.45 else rng.choice(GLUE) for _ in range(rng.randint(lo, hi))
        )

    out = []
    for _ in range(n):
        main, side = rng.sample(topics, 2)
        words = main + " " + side if rng.random() < 0.3 else main
        turns = []
        for _ in range(rng.randint(1, 3)):
            turns += [text(words, 12, 30) + "?", text(words, 50, 150) + "."]
        out.append({"conversations": turns, "source": "synthetic"})
    return out


def prepared_store(folder: Path, n: int) -> Path:
    """A database holding `n` synthetic chains (imported once; each timed run copies it)."""
    from limachat.dialogues.formats import import_file
    from limachat.dialogues.store import Store

    data = folder / "chains.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in synthetic_chains(n)))
    store = Store(folder / "chains.db")
    import_file(store, data, "lima")
    store.close()
    return folder / "chains.db"


class Quiet:
    """A progress that draws nothing (the benchmark prints its own lines)."""

    def __init__(self, *a, **k):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        pass

    def stage(self, *a, **k):
        pass

    def message(self, *a, **k):
        pass

    def update(self, *a, **k):
        pass

    def finish(self, *a, **k):
        pass


def select_runs(n: int, size: int, runs: int, max_tokens: int | None = None) -> dict:
    """Seconds of `select` over `n` chains with an empty embedding cache (each run on a fresh copy, the
    model's load included), and with every embedding cached; `max_tokens`: word pieces embedded per
    chain (default: the setting's)."""

    from limachat.curate.select import Embedder, embedder_folder, select
    from limachat.dialogues.export import Filters
    from limachat.dialogues.store import Store
    from limachat.settings import Curate

    cold, warm, results = [], [], []
    with tempfile.TemporaryDirectory() as d:
        db = prepared_store(Path(d), n)
        started = time.perf_counter()
        embedder = Embedder(embedder_folder(None), max_tokens or Curate().embedding_max_tokens)
        load = time.perf_counter() - started
        for i in range(runs):
            copy = Path(d) / f"run{i}.db"
            shutil.copy(db, copy)
            store = Store(copy)
            started = time.perf_counter()
            results.append(select(store, Filters(), name="bench", size=size, embedder=embedder, progress_cls=Quiet))
            cold.append(time.perf_counter() - started + load)  # a fresh process loads the model too
            started = time.perf_counter()
            select(store, Filters(), name="bench", size=size, embedder=embedder, progress_cls=Quiet, replace=True)
            warm.append(time.perf_counter() - started)
            store.close()
            print(f"  select {n:,}: cold {cold[-1]:.1f} s, cached {warm[-1]:.1f} s; {results[-1].line()}")
    return {"cold": cold, "warm": warm, "load": load, "results": results}


def _token_counters(base_url: str) -> tuple[float, float]:
    """vLLM's running totals of prompt and generated tokens (its Prometheus /metrics)."""
    import httpx

    text = httpx.get(base_url.removesuffix("/v1") + "/metrics", timeout=10).text
    totals = {"vllm:prompt_tokens_total": 0.0, "vllm:generation_tokens_total": 0.0}
    for line in text.splitlines():
        name = line.split("{")[0].split(" ")[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return totals["vllm:prompt_tokens_total"], totals["vllm:generation_tokens_total"]


def judge_runs(base_url: str, runs: int, turns: dict[int, int]) -> dict[int, dict[str, list[float]]]:
    """Judged turns per second (label mode, the default judge: the local `base`) at each concurrency,
    `turns[c]` turns a run. Every run judges chains of its own (synthetic, seeded per run and level), so
    no run finds another's prompts in vLLM's prefix cache; the shared instructions it may find, as in
    real use. Also the prompt and generated tokens per judged turn, from vLLM's counters."""
    from bench_app import key

    from limachat.curate import judge
    from limachat.dialogues.export import Filters
    from limachat.dialogues.formats import import_file
    from limachat.dialogues.store import Store
    from limachat.serve.checkpoints import Checkpoint
    from limachat.settings import Curate

    endpoint = Checkpoint(name="judge", model="base", base_url=base_url, api_key=key(base_url))
    out: dict[int, dict[str, list[float]]] = {c: {"rate": [], "prompt": [], "generated": []} for c in turns}
    with tempfile.TemporaryDirectory() as d:
        for i in range(runs):
            for c, n in turns.items():  # alternate the levels within each round
                data = Path(d) / f"j{i}-{c}.jsonl"
                data.write_text("".join(json.dumps(x) + "\n" for x in synthetic_chains(n, seed=1000 * i + c)))
                store = Store(Path(d) / f"j{i}-{c}.db")
                import_file(store, data, "lima")
                before = _token_counters(base_url)
                started = time.perf_counter()
                s = judge.run(
                    store,
                    endpoint,
                    "label",
                    Filters(),
                    limit=n,
                    concurrency=c,
                    max_tokens=Curate().judge_max_tokens,
                    progress_cls=Quiet,
                )
                seconds = time.perf_counter() - started
                after = _token_counters(base_url)
                assert s.asked == n, s.line()
                out[c]["rate"].append(n / seconds)
                out[c]["prompt"].append((after[0] - before[0]) / n)
                out[c]["generated"].append((after[1] - before[1]) / n)
                print(
                    f"  judge concurrency {c}: {n} turns in {seconds:.1f} s ({s.parsed} parsed), "
                    f"{out[c]['prompt'][-1]:.0f} prompt and {out[c]['generated'][-1]:.0f} generated tokens a turn"
                )
                store.close()
    return out
