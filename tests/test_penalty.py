"""LIMA's repetition penalty on generated tokens only: the logits processor itself, and on the real
vLLM server that `limachat serve` starts with it. Which tokens it penalises is checked on the bundled
model, whose greedy reply repeats the prompt's words (a random model's does not); that it is applied and
refused when bad, on the tiny one."""

from __future__ import annotations

import httpx
import torch

from limachat.serve.vllm_ext import GeneratedTokensPenalty

RECIPE = [{"role": "user", "content": "List the ingredients of a banana bread, one per line."}]


def _processor_with(requests: dict[int, tuple], prior: dict[int, list[int]] | None = None) -> GeneratedTokensPenalty:
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate

    proc = GeneratedTokensPenalty(None, torch.device("cpu"), False)

    def args(row, p):
        if p is None:
            return {}
        return {
            "generated_repetition_penalty": p,
            **({"prior_reply_ids": prior[row]} if prior and row in prior else {}),
        }

    added = [
        (row, SamplingParams(extra_args=args(row, p)), prompt, output) for row, (p, prompt, output) in requests.items()
    ]
    proc.update_state(BatchUpdate(batch_size=len(added), removed=[], added=added, moved=[]))
    return proc


def test_only_tokens_the_reply_generated_are_penalised():
    output = [5, 7]  # the live list vLLM appends to
    proc = _processor_with({0: (2.0, [1, 2, 3], output), 1: (None, [5, 7], [5, 7])})
    logits = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 4.0, 1.0, -2.0], [1.0] * 8])
    out = proc.apply(logits.clone())
    assert out[0].tolist() == [1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 1.0, -4.0]  # prompt ids 1-3 untouched
    assert out[1].tolist() == [1.0] * 8  # a request without the penalty is left alone
    output.append(3)  # the reply now also generated a token that is in its prompt
    assert proc.apply(logits.clone())[0, 3] == 0.5


def test_conversation_scope_adds_the_earlier_replies_tokens_and_nothing_else():
    output = [5]
    proc = _processor_with({0: (2.0, [1, 2, 3, 4, 6], output), 1: (2.0, [1, 2, 3, 4, 6], [5])}, prior={0: [2, 6]})
    logits = torch.tensor([[4.0] * 8, [4.0] * 8])
    out = proc.apply(logits.clone())
    assert out[0].tolist() == [4.0, 4.0, 2.0, 4.0, 4.0, 2.0, 2.0, 4.0]  # earlier replies' 2 and 6, its own 5
    assert out[1].tolist() == [4.0, 4.0, 4.0, 4.0, 4.0, 2.0, 4.0, 4.0]  # scope `reply`: only its own 5
    assert _processor_with({0: (2.0, [], [])}, prior={0: [3]}).apply(torch.ones(1, 4) * 4)[0].tolist() == [4, 4, 4, 2]


def test_real_server_never_penalises_a_token_only_in_the_prompt(real_server):
    """The reply repeats words of the prompt and none of its own: LIMA's penalty, however strong,
    leaves it as it is; vLLM's own penalty pushes the prompt's words down and changes it."""
    messages = [{"role": "user", "content": "Complete this sentence: The capital of France is"}]

    def reply(**params) -> str:
        body = {"model": "dialogue", "messages": messages, "max_tokens": 6, "temperature": 0, **params}
        return httpx.post(
            real_server.url + "/chat/completions", headers=real_server.headers, json=body, timeout=120
        ).json()["choices"][0]["message"]["content"]

    plain = reply()
    assert plain.startswith("The capital of France is")  # every word of it is in the prompt
    assert reply(vllm_xargs={"generated_repetition_penalty": 5.0}) == plain
    assert reply(repetition_penalty=5.0) != plain


def test_real_server_output_differs_with_the_processor_on_and_off(vllm_server):
    def reply(**params) -> list[str]:
        body = {"model": "dialogue", "messages": RECIPE, "max_tokens": 120, "logprobs": True, **params}
        r = httpx.post(vllm_server.url + "/chat/completions", headers=vllm_server.headers, json=body, timeout=300)
        return [t["token"] for t in r.json()["choices"][0]["logprobs"]["content"]]

    # LIMA's sampling: the same prompt and seed give the same text
    lima = {"temperature": 0.7, "top_p": 0.9, "seed": 3}
    assert reply(**lima) == reply(**lima)
    # Greedy, so that only a logits processor can change the reply: this one repeats tokens, and the
    # penalty on what the reply generated pushes those down.
    off = reply(temperature=0)
    assert len(set(off)) < len(off), off
    assert reply(temperature=0, vllm_xargs={"generated_repetition_penalty": 1.2}) != off


def test_real_server_rejects_a_bad_penalty_with_a_clear_400(vllm_server):
    r = httpx.post(
        vllm_server.url + "/chat/completions",
        headers=vllm_server.headers,
        timeout=60,
        json={
            "model": "dialogue",
            "messages": RECIPE,
            "max_tokens": 4,
            "vllm_xargs": {"generated_repetition_penalty": -1},
        },
    )
    assert r.status_code == 400 and "generated_repetition_penalty must be a number above 0" in r.text
    r = httpx.post(
        vllm_server.url + "/chat/completions",
        headers=vllm_server.headers,
        timeout=60,
        json={
            "model": "dialogue",
            "messages": RECIPE,
            "max_tokens": 4,
            "vllm_xargs": {"generated_repetition_penalty": 1.2, "prior_reply_ids": ["a"]},
        },
    )
    assert r.status_code == 400 and "prior_reply_ids must be a list of token ids" in r.text


def test_real_server_conversation_scope_never_penalises_a_token_only_in_a_user_turn(real_server):
    """Scope `conversation` through the chat client. The user turns hold the greedy reply's words and
    the earlier reply none of them: vLLM's own penalty (which counts the user's text) changes the
    reply, LIMA's at 5 leaves it as it is. Once the earlier reply is that same text, it changes it."""
    import asyncio

    from limachat.serve.client import ChatClient

    client = ChatClient(real_server.checkpoint("dialogue"))
    ask = "Complete this sentence:\nThe capital of France is"

    def reply(earlier: str, **params) -> str:
        messages = [
            {"role": "user", "content": ask},
            {"role": "assistant", "content": earlier},
            {"role": "user", "content": ask},
        ]
        done = asyncio.run(client.complete(messages, {"max_tokens": 6, "temperature": 0, **params}))
        assert done.params.get("penalty_scope") == params.get("penalty_scope")  # stored as sent
        return done.text

    def ids(text: str) -> set[int]:
        r = httpx.post(
            real_server.url.removesuffix("/v1") + "/tokenize",
            headers=real_server.headers,
            json={"model": "dialogue", "prompt": text, "add_special_tokens": False},
            timeout=30,
        )
        return set(r.json()["tokens"])

    unrelated = "Sure! Happy to help"
    plain = reply(unrelated)
    assert ids(plain) & ids(ask) and not ids(plain) & ids(unrelated)  # its words: in the user turns only
    assert reply(unrelated, repetition_penalty=5.0) != plain
    strong = {"generated_repetition_penalty": 5.0, "penalty_scope": "conversation"}
    assert reply(unrelated, **strong) == plain
    assert reply(plain, generated_repetition_penalty=5.0, penalty_scope="reply") == reply(plain)
    assert reply(plain, **strong) != reply(plain)  # the earlier reply's tokens are penalised
