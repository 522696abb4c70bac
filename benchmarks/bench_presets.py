"""Which sampling preset keeps the bundled model coherent: 5-turn conversations per preset and seed
against a running `limachat serve`, scored as the coherence test scores them (replies that end by
themselves, the longest run without whitespace, fluency under the base).

    python benchmarks/bench_presets.py --url http://127.0.0.1:8000/v1 --checkpoint dialogue
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics as st

from bench_app import key

from limachat.serve.checkpoints import Checkpoint
from limachat.serve.client import ChatClient, ContextTooLong
from limachat.serve.fluency import FLUENT_BELOW, fluency
from limachat.settings import MAX_TOKENS, Settings

TURNS = [
    "I want to start running. I'm 40 and haven't exercised in years. Where do I begin?",
    "How often per week, and for how long at first?",
    "And what if my knees hurt afterwards?",
    "What should I eat before a morning run?",
    "Can you sum up the plan in three short points?",
]
# The old default for comparison: LIMA's numbers with vLLM's whole-context penalty.
OLD = {"max_tokens": MAX_TOKENS, "temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.2}


def presets(settings: Settings) -> dict[str, dict]:
    out = {"old: vLLM penalty 1.2": OLD}
    for name in ("lima", "focused", "model"):
        settings.sampling.preset = name
        out[name] = settings.sampling_for()[1]
    return out


async def conversation(client: ChatClient, url: str, params: dict, seed: int) -> list[dict]:
    messages, out = [], []
    for prompt in TURNS:
        messages.append({"role": "user", "content": prompt})
        try:
            done = await client.complete(messages, {**params, "seed": seed})
        except ContextTooLong:
            break  # the context window is 2048 tokens: a conversation that outgrows it ends there
        score = await fluency(url, "base", messages, done.text, headers=client.headers)
        out.append(
            {
                "stop": done.finish_reason == "stop",
                "run": max((len(w) for w in re.split(r"\s+", done.text)), default=0),
                "fluency": score,
                "tokens": done.usage.completion_tokens if done.usage else 0,
            }
        )
        messages.append({"role": "assistant", "content": done.text})
    return out


async def measure(url: str, checkpoint: str, seeds: int) -> dict[str, list[dict]]:
    client = ChatClient(Checkpoint(name=checkpoint, model=checkpoint, base_url=url, api_key=key(url)))
    table = presets(Settings())
    jobs = {
        (name, seed): conversation(client, url, params, seed) for name, params in table.items() for seed in range(seeds)
    }
    done = await asyncio.gather(*jobs.values(), return_exceptions=True)
    results: dict[str, list[dict]] = {name: [] for name in table}
    for (name, _), replies in zip(jobs, done):
        if isinstance(replies, Exception):
            print(f"  {name}: {type(replies).__name__}: {replies}")
            continue
        results[name] += replies
    return results


def rows(results: dict[str, list[dict]]) -> list[str]:
    out = []
    for name, replies in results.items():
        if not replies:
            continue
        scores = [r["fluency"] for r in replies if r["fluency"] is not None]
        stopped = sum(r["stop"] for r in replies)
        salad = sum(r["run"] > 30 for r in replies)
        out.append(
            f"| {name} | {len(replies)} | {stopped}/{len(replies)} | {salad} | "
            f"{st.median(r['tokens'] for r in replies):.0f} | {st.median(scores):.2f} ({min(scores):.2f}-{max(scores):.2f}) | "
            f"{sum(s >= FLUENT_BELOW for s in scores)} |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--checkpoint", default="dialogue")
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()
    results = asyncio.run(measure(args.url, args.checkpoint, args.seeds))
    print("\n".join(rows(results)))


if __name__ == "__main__":
    main()
