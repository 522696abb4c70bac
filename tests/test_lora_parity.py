"""What vLLM serves equals what transformers and PEFT compute on the same weights, with limachat's own
LoRA path in the server (serve/vllm_plugin.py: fused adapter slots, only the adapters' layers wrapped):
`base` against transformers, each adapter against PEFT, a batch that mixes all three against each
request alone, and prompt log-probabilities (the fluency score) under an adapter. On the bundled model
and its trained demo adapters, the weights a user gets (docs/testing.md), served uncompiled as a first
start serves them; and compiled, as every later start serves them, on the tiny model's shared server once
it loads the compile its first start made in the background."""

from __future__ import annotations

import asyncio
import shutil

import httpx
import pytest

TOKENS = 24  # greedy tokens per check
TOP = 5
ABS = 2e-3  # float32 on both sides; vLLM's CPU kernels sum in another order than torch's
MESSAGES = [
    [{"role": "user", "content": "What are three good habits for writing clear code?"}],
    [
        {"role": "user", "content": "I want to learn to bake bread."},
        {"role": "assistant", "content": "Start with a simple loaf: flour, water, salt and yeast."},
        {"role": "user", "content": "How long should the dough rise?"},
    ],
]
NAMES = ("base", "zero-shot", "dialogue")


def references(folder, adapters: dict) -> tuple:
    """The tokenizer, and per model name transformers (base) or PEFT (each adapter's folder) on the
    served weights, float32."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    models = {"base": AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()}
    for name, where in adapters.items():
        base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        models[name] = PeftModel.from_pretrained(base, where).eval()
    return tok, models


@pytest.fixture(scope="module")
def reference(real_server):
    return references(real_server.base, {n: real_server.home / "checkpoints" / n for n in NAMES[1:]})


def prompt_ids(tok, messages) -> list[int]:
    return list(tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])


def teacher_forced(model, ids: list[int], start: int):
    """log-softmax at each position from `start` on, predicting ids[start+1:] (and one past the end)."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, start:]
    return torch.log_softmax(logits.float(), -1)


async def served(http, url: str, model: str, ids: list[int]) -> tuple[list[int], list[dict[int, float]]]:
    """Greedy tokens and each step's top log-probabilities, from /v1/completions on token ids."""
    body = {
        "model": model,
        "prompt": ids,
        "max_tokens": TOKENS,
        "temperature": 0,
        "logprobs": TOP,
        "ignore_eos": True,
        "return_tokens_as_token_ids": True,
    }
    r = await http.post(url + "/completions", json=body)
    r.raise_for_status()
    lp = r.json()["choices"][0]["logprobs"]
    tokens = [int(t.removeprefix("token_id:")) for t in lp["tokens"]]
    tops = [{int(k.removeprefix("token_id:")): v for k, v in step.items()} for step in lp["top_logprobs"]]
    return tokens, tops


def each(server, jobs: list[tuple[str, list[int]]], together: bool):
    url = server.url

    async def go():
        async with httpx.AsyncClient(timeout=300, headers=server.headers) as http:
            if together:
                return await asyncio.gather(*(served(http, url, m, ids) for m, ids in jobs))
            return [await served(http, url, m, ids) for m, ids in jobs]

    return asyncio.run(go())


def matches_the_reference(server, tok, models) -> dict[str, set]:
    """Greedy tokens and top log-probabilities of each checkpoint equal its reference's; the answers."""
    answers: dict[str, set] = {name: set() for name in NAMES}
    for messages in MESSAGES:
        ids = prompt_ids(tok, messages)
        for name, (tokens, tops) in zip(NAMES, each(server, [(n, ids) for n in NAMES], together=False)):
            reference_lp = teacher_forced(models[name], ids + tokens, len(ids) - 1)
            expected = [int(reference_lp[i].argmax()) for i in range(TOKENS)]
            assert tokens == expected, (name, tok.decode(tokens), tok.decode(expected))
            for i, top in enumerate(tops):
                for token, logprob in top.items():
                    assert logprob == pytest.approx(float(reference_lp[i, token]), abs=ABS), (name, i, token)
            answers[name].add((tuple(ids), tuple(tokens)))
    return answers


def a_mixed_batch_gives_each_what_it_gets_alone(server, tok) -> None:
    jobs = [(name, prompt_ids(tok, messages)) for messages in MESSAGES for name in NAMES]
    jobs += jobs[:3]  # the same request twice in one batch
    alone = each(server, jobs, together=False)
    mixed = each(server, jobs, together=True)
    for (name, _), (tokens, tops), (mixed_tokens, mixed_tops) in zip(jobs, alone, mixed):
        assert mixed_tokens == tokens, name
        for top, mixed_top in zip(tops, mixed_tops):
            assert mixed_top.keys() == top.keys(), name
            for token, logprob in top.items():
                assert mixed_top[token] == pytest.approx(logprob, abs=ABS), name


def test_each_checkpoint_matches_transformers_and_peft(real_server, reference):
    """Greedy text and top log-probabilities of `base` equal transformers', each adapter's equal PEFT's."""
    matches_the_reference(real_server, *reference)


def test_a_batch_mixing_base_and_both_adapters_gives_each_what_it_gets_alone(real_server, reference):
    a_mixed_batch_gives_each_what_it_gets_alone(real_server, reference[0])


@pytest.mark.after_restart
def test_the_compiled_model_matches_transformers_and_peft(vllm_server):
    """The shared tiny server, once vLLM loads the compile its first start made in the background (the
    restart of test_crash.py's kill), still serves each checkpoint as transformers and PEFT compute it,
    alone and in a mixed batch: limachat's LoRA path compiled by torch.compile (cpu-compile-with-lora)."""
    vllm_server.serve_compiled()
    home = vllm_server.home / "checkpoints"
    tok, models = references(vllm_server.base, {n: home / n for n in NAMES[1:]})
    answers = matches_the_reference(vllm_server, tok, models)
    for name in NAMES[1:]:  # else the parity above would not show a compiled path that dropped the adapters
        assert answers[name] - answers["base"], f"{name} answers every prompt as the base does"
    a_mixed_batch_gives_each_what_it_gets_alone(vllm_server, tok)


def test_prompt_logprobs_under_an_adapter_match_peft_while_others_decode(real_server, reference):
    """The fluency score's request (prompt log-probabilities) under `dialogue`, sharing the engine with
    replies of the other checkpoints, equals PEFT's log-probabilities of the same tokens."""
    tok, models = reference
    ids = prompt_ids(tok, MESSAGES[1]) + tok.encode("Let it rise until it doubles, one to two hours.")

    async def go():
        async with httpx.AsyncClient(timeout=300, headers=real_server.headers) as http:
            body = {"model": "dialogue", "prompt": ids, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 0}
            others = [served(http, real_server.url, m, prompt_ids(tok, MESSAGES[0])) for m in ("base", "zero-shot")]
            results = await asyncio.gather(http.post(real_server.url + "/completions", json=body), *others)
            results[0].raise_for_status()
            return results[0].json()["choices"][0]["prompt_logprobs"]

    scored = asyncio.run(go())
    reference_lp = teacher_forced(models["dialogue"], ids, 0)
    assert scored[0] is None and len(scored) == len(ids)
    for i in range(1, len(ids)):
        assert scored[i][str(ids[i])]["logprob"] == pytest.approx(float(reference_lp[i - 1, ids[i]]), abs=ABS), i


def _cache_hits(url: str) -> float:
    text = httpx.get(url.removesuffix("/v1") + "/metrics", timeout=30).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("vllm:prefix_cache_hits_total"))


def test_a_reply_is_scored_from_the_cached_conversation_with_the_same_score(real_server, reference):
    """Fluency of a second turn reads the conversation the first turn's score left in the prefix cache
    (only the new turn and the reply are computed) and equals the score of the whole prompt computed."""
    from limachat.serve.fluency import fluency

    tok, models = reference
    first = [{"role": "user", "content": "I want to learn to bake bread."}]
    reply1 = "Start with a simple loaf: flour, water, salt and yeast, kneaded for ten minutes until smooth. " * 8
    asyncio.run(fluency(real_server.url, "base", first, reply1, headers=real_server.headers))
    second = [*first, {"role": "assistant", "content": reply1}, {"role": "user", "content": "How long should it rise?"}]
    reply2 = "Let it rise somewhere warm until it has doubled, which takes one to two hours."
    before = _cache_hits(real_server.url)
    score = asyncio.run(fluency(real_server.url, "base", second, reply2, headers=real_server.headers))
    hits = _cache_hits(real_server.url) - before
    head = prompt_ids(tok, second)
    # vLLM caches whole blocks (128 tokens on CPU): all but the last partial block of the first turn's prompt
    assert hits >= 128 * ((len(prompt_ids(tok, first)) + len(tok.encode(reply1))) // 128) > 0, (hits, len(head))

    ids = head + tok.encode(reply2)
    reference_lp = teacher_forced(models["base"], ids, len(head) - 1)
    expected = -float(sum(reference_lp[i, ids[len(head) + i]] for i in range(len(ids) - len(head)))) / (
        len(ids) - len(head)
    )
    assert score == pytest.approx(expected, abs=ABS)
    assert asyncio.run(fluency(real_server.url, "base", second, reply2, headers=real_server.headers)) == pytest.approx(
        score, abs=ABS
    )  # all cached


def test_an_adapter_on_more_layers_than_the_server_wraps_is_refused_in_one_line(vllm_server, tmp_path):
    """The untrained adapter puts LoRA on every layer; the server wraps only the layers the demo adapters
    touch (the upper half)."""
    from conftest import models

    from limachat.serve.server import load_adapter

    wide = tmp_path / "wide"  # the session's temporary folder: one the server loads adapters from
    shutil.copytree(vllm_server.untrained, wide)
    with pytest.raises(ValueError) as e:
        load_adapter(vllm_server.url, "wide", wide, vllm_server.key)
    message = str(e.value)
    assert "does not wrap" in message and "restart `limachat serve`" in message and "\n" not in message, message
    assert models(vllm_server.url, vllm_server.headers) == {"base", "zero-shot", "dialogue"}  # still serving
