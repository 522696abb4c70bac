"""Fluency: the base model's mean negative log-likelihood per token of a reply, in its conversation.

Word salad (runs of words without spaces, broken grammar) is improbable text to the base model, so
its mean NLL is high; a coherent reply's is low. vLLM scores it: the conversation with the
generation prompt and the reply are tokenized by the server's own `/tokenize` (chat template and
all; both at once), sent as one prompt to `/v1/completions` with `prompt_logprobs=0`, and the log-probabilities
of the reply's tokens are averaged. One request of prompt processing, no generation to speak of.

The conversation before the reply is usually in vLLM's prefix cache under the base already (the last
turn's score put it there), so the request asks limachat's vLLM plugin to read the cache
(`limachat_cached_prompt`): only the new user turn and the reply are computed. Should the cache cover
one of the reply's own positions (the same reply scored twice), that position comes back empty and the
request is sent again without the cache.
"""

from __future__ import annotations

import asyncio
import math

import httpx

from limachat.serve.plugin_env import CACHED_PROMPT

# Calibrated on the bundled SmolLM2-135M-Instruct (tests/test_coherence.py, benchmarks/bench_presets.py):
# coherent replies scored 1.3-3.0, replies rambling to the token limit 3.3-3.8, and the word salad
# of the old whole-context penalty (tests/data/word_salad.json, runs of 200+ letters) 4.5-4.9.
FLUENT_BELOW = 3.5
_context: dict[tuple[str, str], int | None] = {}  # (server, model) -> its context window, from /v1/models


async def fluency(
    base_url: str,
    model: str,
    messages: list[dict[str, str]],
    reply: str,
    *,
    timeout: float = 30.0,
    cached: bool = True,
    headers: dict[str, str] | None = None,
) -> float | None:
    """Mean NLL (nats per token) of `reply` after `messages` under `model` at the vLLM server
    `base_url` (…/v1), with `headers` (its API key). None for an empty reply. `cached=False` computes the
    whole prompt (the benchmark's yardstick)."""
    root = base_url.rstrip("/").removesuffix("/v1")
    async with httpx.AsyncClient(timeout=timeout, headers=headers) as http:
        prefix, tail = await asyncio.gather(  # the two tokenizations at once: one round trip's wait
            http.post(f"{root}/tokenize", json={"model": model, "messages": messages, "add_generation_prompt": True}),
            http.post(f"{root}/tokenize", json={"model": model, "prompt": reply, "add_special_tokens": False}),
        )
        prefix.raise_for_status()
        tail.raise_for_status()
        head, ids = prefix.json()["tokens"], tail.json()["tokens"]
        if not ids:
            return None
        if (root, model) not in _context:  # asked once per server and model, not per reply
            models = (await http.get(f"{root}/v1/models")).json()["data"]
            _context[(root, model)] = next((m.get("max_model_len") for m in models if m["id"] == model), None)
        limit = _context[(root, model)] or len(head) + len(ids) + 1
        head = head[max(0, len(head) + len(ids) + 1 - limit) :]  # a long conversation: its oldest tokens go
        if not head:
            return None  # the reply alone fills the context window
        logprobs = None
        for use_cache in (True, False)[0 if cached else 1 :]:
            body = {"model": model, "prompt": head + ids, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 0}
            if use_cache:
                body["vllm_xargs"] = {CACHED_PROMPT: 1}
            r = await http.post(f"{root}/v1/completions", json=body)
            r.raise_for_status()
            logprobs = _reply_logprobs(r.json()["choices"][0]["prompt_logprobs"][len(head) :], ids)
            if logprobs is not None:
                break
    if not logprobs or not all(math.isfinite(x) for x in logprobs):
        return None
    return -sum(logprobs) / len(logprobs)


def _reply_logprobs(scored: list[dict | None], ids: list[int]) -> list[float] | None:
    """Each reply token's log-probability; None where a position came back empty (the prefix cache had
    it: token 0 at log-probability 0, or no entry at all)."""
    out = []
    for entry, tok in zip(scored, ids):
        hit = (entry or {}).get(str(tok))
        if hit is None or (tok == 0 and hit["logprob"] == 0.0):
            return None
        out.append(hit["logprob"])
    return out if len(out) == len(ids) else None
