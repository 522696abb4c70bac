"""Streaming chat client for any OpenAI-compatible `/v1/chat/completions` (vLLM, llama.cpp, APIs).

    client = ChatClient(checkpoint)
    async for event in client.stream(messages, params):
        if isinstance(event, str): ...        # text as it arrives
        else: event.usage, event.ttft ...     # the final Completion

Failures raise one of the ClientError subclasses below; each carries the text received so far.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from limachat.serve.checkpoints import Checkpoint

# Sampling keys that travel in vLLM's `vllm_xargs` (per-request arguments of custom logits processors).
XARGS = ("generated_repetition_penalty",)
PENALTY, SCOPE = "generated_repetition_penalty", "penalty_scope"
# With scope `conversation`, the token ids of the earlier assistant turns travel in this vllm_xarg
# (limachat.serve.vllm_ext adds them to the ids the reply generated).
PRIOR_IDS = "prior_reply_ids"


class ClientError(Exception):
    """A request to a checkpoint failed. `str(e)` is the whole story (it may name the model id and
    the endpoint's URL); `public` says what happened without naming either, for pages that must not
    tell which checkpoint is which (blind comparisons). `partial` holds any text streamed before."""

    public = "the request failed"

    def __init__(self, message: str, *, partial: str = "", status: int | None = None, public: str | None = None):
        super().__init__(message)
        self.partial = partial
        self.status = status
        if public is not None:
            self.public = public


class EndpointUnreachable(ClientError):
    """Nothing answers at the endpoint's address (server down, wrong host or port)."""

    public = "its server cannot be reached (stopped, starting, or a wrong address)"


class UnknownModel(ClientError):
    """The endpoint answers but does not serve the requested model id."""

    public = "its endpoint does not serve the configured model"


class ContextTooLong(ClientError):
    """The prompt (plus max_tokens) does not fit the model's context window."""

    public = "the conversation does not fit its context window"


class HTTPStatusError(ClientError):
    """Any other non-2xx answer."""


class StreamBroken(ClientError):
    """The stream stopped before its end; `partial` keeps what arrived."""

    public = "the reply broke off before its end (its server may have stopped)"


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Completion:
    """The last event of a stream."""

    text: str
    model: str
    finish_reason: str | None
    usage: Usage | None
    ttft: float | None  # seconds from sending the request to the first text
    latency: float  # seconds from sending the request to the end of the stream
    params: dict[str, Any] = field(default_factory=dict)


_CONTEXT_RE = re.compile(r"context length|maximum model length|context window|too long|context_length", re.I)
_MODEL_RE = re.compile(r"model .*(does not exist|not found)|unknown model|no such model", re.I)


def request_body(
    model: str, messages: list[dict[str, str]], params: dict[str, Any], prior_ids: list[int] | None = None
) -> dict[str, Any]:
    """The JSON of a streamed chat request; LIMA's generated-tokens penalty goes in vllm_xargs, with
    the ids of the earlier replies' tokens when its scope is the conversation."""
    xargs = {k: params[k] for k in XARGS if k in params}
    if prior_ids:
        xargs[PRIOR_IDS] = prior_ids
    fields = {k: v for k, v in params.items() if k not in XARGS and k != SCOPE}
    body = {"model": model, "messages": messages, "stream": True, "stream_options": {"include_usage": True}, **fields}
    if xargs:
        body["vllm_xargs"] = {**body.get("vllm_xargs", {}), **xargs}
    return body


def _error_message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip()[:300]
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, dict):
        return str(err.get("message") or err.get("detail") or err)
    return str(err)


def _classify(status: int, message: str, model: str, url: str) -> ClientError:
    if status == 404 and _MODEL_RE.search(message):
        return UnknownModel(f"{url} does not serve model {model!r}: {message}", status=status)
    if status in (400, 413, 422) and _CONTEXT_RE.search(message):
        return ContextTooLong(f"prompt too long for {model!r}: {message}", status=status)
    if status == 404 and "model" in message.lower():
        return UnknownModel(f"{url} does not serve model {model!r}: {message}", status=status)
    return HTTPStatusError(
        f"{url} answered HTTP {status}: {message}", status=status, public=f"its endpoint answered HTTP {status}"
    )


IDS_CACHED = 4096  # earlier replies' token ids kept per client


class ChatClient:
    """Streams chat completions from one checkpoint. Safe to share across asyncio tasks."""

    def __init__(self, checkpoint: Checkpoint, *, timeout: float = 600.0, connect_timeout: float = 5.0):
        if not checkpoint.base_url:
            raise ValueError(f"checkpoint {checkpoint.name!r} has no base_url")
        self.checkpoint = checkpoint
        self.url = checkpoint.base_url.rstrip("/") + "/chat/completions"
        self.timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self.headers = {"Authorization": f"Bearer {checkpoint.api_key}"} if checkpoint.api_key else {}
        # Loading the CA bundle costs ~40 ms of CPU: once per client, not once per request (measured:
        # per request it added 48 ms to the first token of one stream and 250 ms at 16 streams).
        self.ssl = httpx.create_ssl_context()
        self._ids: dict[str, list[int]] = {}  # an earlier reply's text -> its token ids (penalty_scope)

    def sent(self, params: dict[str, Any]) -> dict[str, Any]:
        """The sampling parameters this endpoint is sent: `params` less its omit_params and None values
        (and the penalty's scope, when the penalty itself is not sent)."""
        out = {k: v for k, v in params.items() if k not in self.checkpoint.omit_params and v is not None}
        if PENALTY not in out:
            out.pop(SCOPE, None)
        return out

    async def _prior_ids(self, http: httpx.AsyncClient, messages: list[dict[str, str]]) -> list[int]:
        """The token ids of the earlier assistant turns, each text tokenized once by the server's
        `/tokenize` (no special tokens: the chat template's own markers are never penalised)."""
        texts = dict.fromkeys(m["content"] for m in messages if m["role"] == "assistant" and m["content"])
        found = {t: self._ids[t] for t in texts if t in self._ids}
        root = self.url.removesuffix("/chat/completions").removesuffix("/v1")
        for text in texts.keys() - found.keys():
            r = await http.post(
                f"{root}/tokenize", json={"model": self.checkpoint.model, "prompt": text, "add_special_tokens": False}
            )
            if r.status_code >= 400:
                raise HTTPStatusError(
                    f"{root}/tokenize answered HTTP {r.status_code}: {_error_message(r.content)} "
                    f"(penalty_scope 'conversation' needs vLLM's /tokenize)",
                    status=r.status_code,
                    public=f"its endpoint answered HTTP {r.status_code}",
                )
            found[text] = self._ids[text] = r.json()["tokens"]
            if len(self._ids) > IDS_CACHED:
                self._ids.pop(next(iter(self._ids)))
        return sorted({i for ids in found.values() for i in ids})

    async def stream(
        self, messages: list[dict[str, str]], params: dict[str, Any] | None = None
    ) -> AsyncIterator[str | Completion]:
        params = self.sent(params or {})
        model = self.checkpoint.model
        text: list[str] = []
        finish: str | None = None
        usage: Usage | None = None
        ttft: float | None = None
        done = False
        start = time.perf_counter()
        try:
            async with httpx.AsyncClient(timeout=self.timeout, headers=self.headers, verify=self.ssl) as http:
                prior = await self._prior_ids(http, messages) if params.get(SCOPE) == "conversation" else None
                body = request_body(model, messages, params, prior)
                async with http.stream("POST", self.url, json=body) as resp:
                    if resp.status_code >= 400:
                        raise _classify(resp.status_code, _error_message(await resp.aread()), model, self.url)
                    async for line in resp.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            done = True
                            break
                        chunk = json.loads(data)
                        if "error" in chunk:  # vLLM reports errors raised mid-generation in-band
                            raise StreamBroken(f"{model}: {_error_message(data.encode())}", partial="".join(text))
                        if chunk.get("usage"):
                            usage = Usage(
                                chunk["usage"].get("prompt_tokens", 0), chunk["usage"].get("completion_tokens", 0)
                            )
                        for choice in chunk.get("choices") or []:
                            piece = (choice.get("delta") or {}).get("content")
                            if piece:
                                if ttft is None:
                                    ttft = time.perf_counter() - start
                                text.append(piece)
                                yield piece
                            finish = choice.get("finish_reason") or finish
        except ClientError as e:
            e.partial = e.partial or "".join(text)
            raise
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise EndpointUnreachable(f"cannot reach {self.url} ({type(e).__name__}: {e})") from e
        except (httpx.TransportError, json.JSONDecodeError) as e:
            raise StreamBroken(
                f"stream from {model} broke after {len(text)} chunks: {type(e).__name__}: {e}", partial="".join(text)
            ) from e
        if not done and finish is None:
            raise StreamBroken(f"stream from {model} ended before it finished", partial="".join(text))
        yield Completion("".join(text), model, finish, usage, ttft, time.perf_counter() - start, params)

    def status(self, timeout: float = 3.0) -> str:
        """One line on whether the endpoint answers and serves this model (for start-up logs)."""
        try:
            r = httpx.get(
                self.url.removesuffix("/chat/completions") + "/models",
                headers=self.headers,
                timeout=timeout,
                verify=self.ssl,
            )
            served = {m["id"] for m in r.json().get("data", [])} if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return "not answering yet: chats with it show an error until it does"
        if served is None:
            return f"answers HTTP {r.status_code}"
        return "ready" if self.checkpoint.model in served else f"answers, but does not list {self.checkpoint.model!r}"

    async def complete(self, messages: list[dict[str, str]], params: dict[str, Any] | None = None) -> Completion:
        """Run a stream to its end and return the Completion."""
        async for event in self.stream(messages, params):
            if isinstance(event, Completion):
                return event
        raise StreamBroken("stream produced no completion")  # unreachable: stream always ends with one
