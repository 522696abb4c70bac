"""Coherence as a user sees it, on the real vLLM server with the bundled model and its demo adapters, at the
default preset and reply length:
the held-out follow-up conversations (limachat.followups) with both demo checkpoints at once, as
several users would chat, checked for what went wrong before (rambling to the token limit, words
run together, word salad, a reply that gives back the previous one instead of answering); and the
fluency score calibrated on word salad that sampling produced before LIMA's penalty was applied as
the paper means it."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from limachat import followups
from limachat.dialogues.repeats import is_repeat
from limachat.serve.fluency import FLUENT_BELOW, fluency
from limachat.settings import MAX_TOKENS, Settings

DATA = Path(__file__).parent / "data"
LONGEST_RUN = 30  # characters without whitespace; longer means words ran together
SEED = 7  # a fixed seed: the same draw on every run


def longest_run(text: str) -> int:
    return max((len(w) for w in re.split(r"\s+", text)), default=0)


def test_default_preset_answers_every_follow_up_of_the_held_out_conversations(real_server, clean_env):
    settings = Settings(home=real_server.home)
    runs = {}
    for name in ("zero-shot", "dialogue"):
        preset, params = settings.sampling_for(name)
        assert params["max_tokens"] == MAX_TOKENS  # the reply length a user gets
        runs[name] = (name, {**params, "seed": SEED})
    convos = followups.conversations()
    assert len(convos) >= 8 and all(len(c["turns"]) >= 3 for c in convos)
    results = asyncio.run(followups.run(real_server.url, runs, convos, api_key=real_server.key))
    summary = {name: followups.summary(replies) for name, replies in results.items()}
    for name, replies in results.items():
        s = summary[name]
        repeated = [(r.conversation, r.turn, round(r.repeat, 2)) for r in replies if is_repeat(r.repeat)]
        assert s["stopped"] >= 0.9 * s["replies"], (
            f"{name}: only {s['stopped']} of {s['replies']} replies ended by themselves"
        )
        for r in replies:
            where = f"{name} {r.conversation} turn {r.turn}"
            assert longest_run(r.text) <= LONGEST_RUN, f"{where}: words run together: {r.text[-300:]!r}"
            assert r.fluency is not None and r.fluency < FLUENT_BELOW, (
                f"{where}: fluency {r.fluency}: {r.text[-300:]!r}"
            )
        assert replies[0].text, f"{name}: empty reply"
        print(f"{name}: {s} repeated: {repeated}")
    for (
        name,
        s,
    ) in summary.items():  # before LIMA's penalty counted the earlier replies: dialogue 7-9 of 22, zero-shot 4-5
        assert s["repeats"] * 12 <= s["followups"], (
            f"{name} repeated an earlier reply in {s['repeats']} of {s['followups']} follow-ups"
        )


@pytest.mark.parametrize("fixture, fluent", [("word_salad.json", False), ("coherent.json", True)])
def test_fluency_threshold_separates_word_salad_from_coherent_text(real_server, fixture, fluent):
    """Both fixtures are real third-turn replies of the bundled model to the same conversation: the
    salad with vLLM's whole-context penalty 1.2 (the old default), the other with LIMA's."""
    case = json.loads((DATA / fixture).read_text())
    score = asyncio.run(fluency(real_server.url, "base", case["messages"], case["reply"], headers=real_server.headers))
    assert (score < FLUENT_BELOW) is fluent, f"{fixture}: fluency {score:.2f} (threshold {FLUENT_BELOW})"
