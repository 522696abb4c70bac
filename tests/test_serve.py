"""The real vLLM CPU server on the bundled model, started the way a user starts it."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import models

from limachat.serve.checkpoints import Checkpoint
from limachat.serve.client import ChatClient, Completion, ContextTooLong, UnknownModel


def stream(server, model: str, messages, **params):
    client = ChatClient(Checkpoint(name=model, model=model, base_url=server.url))

    async def go():
        return [e async for e in client.stream(messages, params)]

    return asyncio.run(go())


def test_serves_base_and_both_adapters(vllm_server):
    assert models(vllm_server.url) == {"base", "zero-shot", "dialogue"}
    out = vllm_server.output()
    assert "vLLM ready in" in out and f"http://127.0.0.1:{vllm_server.port}/v1 serving base, zero-shot, dialogue" in out
    home = vllm_server.home / "checkpoints"
    assert (
        f"zero-shot: trained adapter {home / 'zero-shot'}" in out
        and f"dialogue: trained adapter {home / 'dialogue'}" in out
    )


@pytest.mark.parametrize("model", ["zero-shot", "dialogue", "base"])
def test_streams_a_reply_with_usage_and_timing(vllm_server, model):
    events = stream(
        vllm_server,
        model,
        [{"role": "user", "content": "Complete this sentence: The capital of France is"}],
        temperature=0.0,
        max_tokens=24,
    )
    done = events[-1]
    pieces = events[:-1]
    assert isinstance(done, Completion) and all(isinstance(p, str) for p in pieces)
    assert len(pieces) >= 2, "the reply should arrive in several pieces, not at once"
    assert "Paris" in done.text and done.text == "".join(pieces)
    assert done.finish_reason in ("stop", "length")
    assert done.usage.prompt_tokens > 5 and 1 <= done.usage.completion_tokens <= 24
    assert 0 < done.ttft < done.latency < 120


def test_each_checkpoint_answers_with_its_own_weights(vllm_server):
    """`base` is the base model with no adapter (vLLM 0.32's CPU kernels used to hand it the last
    adapter's weights), and the two adapters differ from it and from each other."""
    import httpx
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    messages = [{"role": "user", "content": "Can you explain what photosynthesis is?"}]

    def first_logprobs(model: str) -> dict[str, float]:
        body = {
            "model": model,
            "messages": messages,
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": 3,
        }
        top = httpx.post(vllm_server.url + "/chat/completions", json=body, timeout=120).json()["choices"][0]["logprobs"]
        return {t["token"]: t["logprob"] for t in top["content"][0]["top_logprobs"]}

    served = {m: first_logprobs(m) for m in ("base", "zero-shot", "dialogue")}
    folder = vllm_server.home / "base" / "SmolLM2-135M-Instruct" / "model"
    tok, model = (
        AutoTokenizer.from_pretrained(folder),
        AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32),
    )
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)[
        "input_ids"
    ]
    with torch.no_grad():
        reference = torch.log_softmax(model(ids).logits[0, -1], -1)
    for token, logprob in served["base"].items():
        assert logprob == pytest.approx(float(reference[tok.convert_tokens_to_ids(token)]), abs=2e-3), (token, served)
    # the three top-3 distributions all differ (two adapters can share a top token's rounded logprob)
    assert len({tuple(sorted((t, round(lp, 4)) for t, lp in top.items())) for top in served.values()}) == 3, served


def test_unknown_model_from_real_server(vllm_server):
    with pytest.raises(UnknownModel, match="does not serve model 'lima-7b'"):
        stream(vllm_server, "lima-7b", [{"role": "user", "content": "hi"}])


def test_prompt_longer_than_context_from_real_server(vllm_server):
    long_prompt = "tell me more " * 1200  # ~3,600 tokens against a 2,048-token window
    with pytest.raises(ContextTooLong):
        stream(vllm_server, "dialogue", [{"role": "user", "content": long_prompt}], max_tokens=16)


@pytest.mark.stops_server
def test_ctrl_c_stops_every_process_it_started(vllm_server):
    vllm_server.track()
    assert len(vllm_server.started) >= 2, "vLLM's API server and its engine process"
    code = vllm_server.interrupt()
    assert code == 0
    time.sleep(1)
    assert vllm_server.leftovers() == []
    assert vllm_server.output().rstrip().endswith("stopped")
