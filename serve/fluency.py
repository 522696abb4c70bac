"""Fluency: the base model's mean negative log-likelihood per token of a reply, in its conversation.

Word salad (runs of words without spaces, broken grammar) is improbable text to the base model, so
its mean NLL is high; a coherent reply's is low. vLLM scores it: the conversation with the
generation prompt and the reply are tokenized by the server's own `/tokenize` (chat template and
all), sent as one prompt to `/v1/completions` with `prompt_logprobs=0`, and the log-probabilities
of the reply's tokens are averaged. One request of prompt processing, no generation to speak of.
"""

from __future__ import annotations

import math

import httpx

# Calibrated on the bundled SmolLM2-135M-Instruct (tests/test_coherence.py, benchmarks/bench_presets.py):
# coherent replies scored 1.3-3.0, replies rambling to the token limit 3.3-3.8, and the word salad
# of the old whole-context penalty (tests/data/word_salad.json, runs of 200+ letters) 4.5-4.9.
FLUENT_BELOW = 3.5
_context: dict[tuple[str, str], int | None] = {}  # (server, model) -> its context window, from /v1/models


async def fluency(
    base_url: str, model: str, messages: list[dict[str, str]], reply: str, *, timeout: float = 30.0
) -> float | None:
    """Mean NLL (nats per token) of `reply` after `messages` under `model` at the vLLM server
    `base_url` (…/v1). None for an empty reply."""
    root = base_url.rstrip("/").removesuffix("/v1")
    async with httpx.AsyncClient(timeout=timeout) as http:
        prefix = await http.post(
            f"{root}/tokenize", json={"model": model, "messages": messages, "add_generation_prompt": True}
        )
        prefix.raise_for_status()
        tail = await http.post(f"{root}/tokenize", json={"model": model, "prompt": reply, "add_special_tokens": False})
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
        r = await http.post(
            f"{root}/v1/completions",
            json={"model": model, "prompt": head + ids, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 0},
        )
        r.raise_for_status()
    scored = r.json()["choices"][0]["prompt_logprobs"][len(head) :]
    logprobs = [entry[str(tok)]["logprob"] for entry, tok in zip(scored, ids)]
    return -sum(logprobs) / len(logprobs) if logprobs and all(math.isfinite(x) for x in logprobs) else None
