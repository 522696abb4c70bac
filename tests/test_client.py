"""The streaming client's error mapping.

Failures a healthy vLLM will not produce on demand (an HTTP 500, a connection cut mid-stream) come
from a small stand-in HTTP server on 127.0.0.1 that answers each model id with one failure. The
real server's own errors (unknown model, prompt too long) are checked in test_serve.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import free_port

from limachat.serve.checkpoints import Checkpoint
from limachat.serve.client import (
    ChatClient,
    Completion,
    ContextTooLong,
    EndpointUnreachable,
    HTTPStatusError,
    StreamBroken,
    UnknownModel,
)


def chunk(text: str) -> bytes:
    return f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': text}, 'finish_reason': None}]})}\n\n".encode()


class Failing(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        model = body["model"]
        if self.path == "/tokenize":  # vLLM's tokenizer endpoint: here one id per character
            if model == "no-tokenize":  # an OpenAI-compatible server without it
                return self._json(404, {"detail": "Not Found"})
            return self._json(200, {"tokens": [ord(c) for c in body["prompt"]]})
        self.server.requests.append(body)
        if model == "missing":  # vLLM's answer for an unknown model
            return self._json(
                404, {"error": {"message": "The model `missing` does not exist.", "type": "NotFoundError", "code": 404}}
            )
        if model == "long":
            return self._json(
                400,
                {
                    "error": {
                        "message": "This model's maximum context length is 2048 tokens. However, your request has 3000 input tokens.",
                        "type": "BadRequestError",
                        "code": 400,
                    }
                },
            )
        if model == "boom":
            return self._json(500, {"error": {"message": "engine dead", "type": "InternalServerError", "code": 500}})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        if model == "cut":  # chunked encoding, connection dropped in the middle of a chunk
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (chunk("Hello"), chunk(" wor")):
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"40\r\ndata: {")
            self.wfile.flush()
            self.close_connection = True
            return
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(chunk("Hi") + chunk(" there"))
        if model == "ok":
            final = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            usage = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}}
            self.wfile.write(f"data: {json.dumps(final)}\n\ndata: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        self.close_connection = True  # "early": ends cleanly, but before any finish or [DONE]


@pytest.fixture(scope="module")
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Failing)
    server.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def run(endpoint, model: str, params=None, **checkpoint):
    url = f"http://127.0.0.1:{endpoint.server_port}/v1"
    client = ChatClient(Checkpoint(name=model, model=model, base_url=url, **checkpoint))

    async def go():
        events = []
        async for e in client.stream([{"role": "user", "content": "hi"}], params):
            events.append(e)
        return events

    return asyncio.run(go())


def test_stream_yields_text_then_completion(endpoint):
    events = run(endpoint, "ok", {"max_tokens": 5, "temperature": 0.1})
    assert events[:2] == ["Hi", " there"]
    done = events[-1]
    assert isinstance(done, Completion) and done.text == "Hi there" and done.finish_reason == "stop"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (7, 2)
    assert 0 < done.ttft <= done.latency
    sent = endpoint.requests[-1]
    assert (sent["temperature"], sent["max_tokens"]) == (0.1, 5) and "top_p" not in sent  # what it was given, no more
    assert done.params == {"max_tokens": 5, "temperature": 0.1}
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


def test_a_checkpoint_omits_what_its_endpoint_rejects(endpoint):
    events = run(
        endpoint,
        "ok",
        {"repetition_penalty": 1.3, "top_p": 0.9, "temperature": None},
        omit_params=["repetition_penalty"],
    )
    assert "repetition_penalty" not in endpoint.requests[-1] and endpoint.requests[-1]["top_p"] == 0.9
    assert events[-1].params == {"top_p": 0.9}  # what was sent, not what was asked for


def test_lima_penalty_travels_in_vllm_xargs(endpoint):
    events = run(endpoint, "ok", {"temperature": 0.7, "generated_repetition_penalty": 1.2})
    sent = endpoint.requests[-1]
    assert sent["vllm_xargs"] == {"generated_repetition_penalty": 1.2} and "generated_repetition_penalty" not in sent
    assert events[-1].params == {"temperature": 0.7, "generated_repetition_penalty": 1.2}
    run(endpoint, "ok", {"generated_repetition_penalty": 1.2}, omit_params=["generated_repetition_penalty"])
    assert "vllm_xargs" not in endpoint.requests[-1]


def test_conversation_scope_sends_the_earlier_replies_token_ids(endpoint):
    url = f"http://127.0.0.1:{endpoint.server_port}/v1"
    messages = [
        {"role": "user", "content": "zzz"},
        {"role": "assistant", "content": "ab"},
        {"role": "user", "content": "yyy"},
        {"role": "assistant", "content": "ba c"},
        {"role": "user", "content": "x"},
    ]
    params = {"generated_repetition_penalty": 1.2, "penalty_scope": "conversation"}

    def go(model: str, params: dict, **checkpoint):
        client = ChatClient(Checkpoint(name=model, model=model, base_url=url, **checkpoint))
        return asyncio.run(client.complete(messages, params))

    done = go("ok", params)
    sent = endpoint.requests[-1]
    # the assistant turns' ids, never the user's (z, y, x): sorted, each once
    assert sent["vllm_xargs"] == {"generated_repetition_penalty": 1.2, "prior_reply_ids": [32, 97, 98, 99]}
    assert "penalty_scope" not in sent and done.params == params  # a client-side key, stored as asked
    done = go("ok", params, omit_params=["generated_repetition_penalty"])
    assert "vllm_xargs" not in endpoint.requests[-1] and done.params == {}  # no penalty: no scope either
    with pytest.raises(HTTPStatusError, match="penalty_scope 'conversation' needs vLLM's /tokenize"):
        go("no-tokenize", params)


@pytest.mark.parametrize(
    "model, error, text",
    [
        ("missing", UnknownModel, "does not serve model 'missing'"),
        ("long", ContextTooLong, "maximum context length is 2048"),
        ("boom", HTTPStatusError, "HTTP 500: engine dead"),
    ],
)
def test_http_errors_are_told_apart(endpoint, model, error, text):
    with pytest.raises(error, match=text) as e:
        run(endpoint, model)
    assert e.value.partial == ""


@pytest.mark.parametrize("model", ["cut", "early"])
def test_broken_stream_keeps_the_partial_text(endpoint, model):
    with pytest.raises(StreamBroken) as e:
        run(endpoint, model)
    assert e.value.partial in ("Hello wor", "Hi there")
    assert e.value.partial == ("Hello wor" if model == "cut" else "Hi there")


def test_unreachable_endpoint():
    client = ChatClient(Checkpoint(name="x", model="x", base_url=f"http://127.0.0.1:{free_port()}/v1"))
    with pytest.raises(EndpointUnreachable, match="cannot reach http://127.0.0.1"):
        asyncio.run(client.complete([{"role": "user", "content": "hi"}]))


def test_the_stand_in_endpoint_streams_as_vllm_does_at_its_stated_pace():
    """benchmarks/standin.py (the load test's GPU-speed endpoint) speaks what ChatClient reads: SSE chunks,
    a finish reason, usage; its first token comes after --ttft and the rest at --rate tokens a second."""
    import subprocess
    import sys
    import time

    from conftest import REPO

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "benchmarks" / "standin.py"), "--port", str(port), "--ttft", "0.2", "--rate", "50",
         "--tokens", "25"],
    )  # fmt: skip
    try:
        client = ChatClient(Checkpoint(name="dialogue", model="dialogue", base_url=f"http://127.0.0.1:{port}/v1"))
        deadline = time.monotonic() + 30
        while client.status() != "ready":
            assert time.monotonic() < deadline and proc.poll() is None, "the stand-in did not come up"
            time.sleep(0.2)
        done = asyncio.run(client.complete([{"role": "user", "content": "hi"}], {"max_tokens": 100}))
        assert done.finish_reason == "stop" and done.usage.completion_tokens == 25 and len(done.text.split()) == 25
        assert 0.2 <= done.ttft < 0.6 and 0.2 + 24 / 50 <= done.latency < 0.2 + 24 / 50 + 0.6, (done.ttft, done.latency)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
