"""Coherence as a user sees it: 4-turn conversations with both demo checkpoints at the default
preset and the default reply length, on the real vLLM server, checked for what went wrong before
(rambling to the token limit, words run together, word salad); and the fluency score calibrated
on word salad that sampling produced before LIMA's penalty was applied as the paper means it."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from limachat.serve.checkpoints import Checkpoint
from limachat.serve.client import ChatClient
from limachat.serve.fluency import FLUENT_BELOW, fluency
from limachat.settings import MAX_TOKENS, Settings

DATA = Path(__file__).parent / "data"
TURNS = ["I want to start running. I'm 40 and haven't exercised in years. Where do I begin?",
         "How often per week, and for how long at first?",
         "And what if my knees hurt afterwards?",
         "What should I eat before a morning run?"]
LONGEST_RUN = 30  # characters without whitespace; longer means words ran together


def longest_run(text: str) -> int:
    return max((len(w) for w in re.split(r"\s+", text)), default=0)


async def conversation(url: str, checkpoint: str, params: dict) -> list[dict]:
    client = ChatClient(Checkpoint(name=checkpoint, model=checkpoint, base_url=url))
    messages, replies = [], []
    for prompt in TURNS:
        messages.append({"role": "user", "content": prompt})
        done = await client.complete(messages, params)
        score = await fluency(url, "base", messages, done.text)
        replies.append({"text": done.text, "finish": done.finish_reason, "fluency": score, "sent": done.params})
        messages.append({"role": "assistant", "content": done.text})
    return replies


def test_default_preset_keeps_both_checkpoints_coherent_for_four_turns(vllm_server, clean_env):
    settings = Settings(home=vllm_server.home)
    runs = {}
    for name in ("zero-shot", "dialogue"):
        preset, params = settings.sampling_for(name)
        assert params["max_tokens"] == MAX_TOKENS  # the reply length a user gets
        runs[name] = {**params, "seed": 7}  # a fixed seed: the same draw on every run
    results = asyncio.run(_both(vllm_server.url, runs))
    report = {name: [(r["finish"], len(r["text"]), longest_run(r["text"]), round(r["fluency"], 2)) for r in replies]
              for name, replies in results.items()}
    for name, replies in results.items():
        stopped = sum(r["finish"] == "stop" for r in replies)
        assert stopped >= 3, f"{name}: only {stopped} of 4 replies ended by themselves: {report}"
        for i, r in enumerate(replies, 1):
            assert longest_run(r["text"]) <= LONGEST_RUN, f"{name} turn {i}: words run together: {r['text'][-300:]!r}"
            assert r["fluency"] < FLUENT_BELOW, f"{name} turn {i}: fluency {r['fluency']:.2f}: {r['text'][-300:]!r}"
        assert replies[0]["sent"] == {k: v for k, v in runs[name].items()}


async def _both(url: str, runs: dict[str, dict]) -> dict[str, list[dict]]:
    names = list(runs)
    out = await asyncio.gather(*(conversation(url, n, runs[n]) for n in names))
    return dict(zip(names, out))


@pytest.mark.parametrize("fixture, fluent", [("word_salad.json", False), ("coherent.json", True)])
def test_fluency_threshold_separates_word_salad_from_coherent_text(vllm_server, fixture, fluent):
    """Both fixtures are real third-turn replies of the bundled model to the same conversation: the
    salad with vLLM's whole-context penalty 1.2 (the old default), the other with LIMA's."""
    case = json.loads((DATA / fixture).read_text())
    score = asyncio.run(fluency(vllm_server.url, "base", case["messages"], case["reply"]))
    assert (score < FLUENT_BELOW) is fluent, f"{fixture}: fluency {score:.2f} (threshold {FLUENT_BELOW})"
