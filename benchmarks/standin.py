"""A stand-in OpenAI endpoint that streams at GPU speed, for load tests of the app alone.

No GPU-speed backend runs on the development machines, and vLLM on 2 CPU cores would be the bottleneck
long before the app is; this is a real HTTP server of our own (Starlette under uvicorn) that answers
`/v1/chat/completions` with Server-Sent Events as vLLM does: the first token after `--ttft` seconds,
then `--rate` tokens a second per stream, `--tokens` of them, then usage and `[DONE]`. It generates
nothing: the reply is a fixed sentence repeated, and every model id it lists says `limachat-standin`.

    python benchmarks/standin.py --port 9100 --rate 60 --tokens 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

WORDS = "This is the stand-in endpoint streaming a reply at the pace of a GPU server.".split()


def build(ttft: float, rate: float, tokens: int, answer=None, ids=("base", "zero-shot", "dialogue")):
    """The app; `answer(body) -> str`, when given, is the reply to each request (its words streamed as
    tokens), for a test's rule-following stand-in of a capable model (a judge); `ids`, the models listed."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    async def models(request):
        return JSONResponse(
            {"object": "list", "data": [{"id": i, "object": "model", "owned_by": "limachat-standin"} for i in ids]}
        )

    async def chat(request):
        body = await request.json()
        said = answer(body).split(" ") if answer else None
        n = len(said) if said else min(int(body.get("max_tokens") or tokens), tokens)

        def word(i: int) -> str:
            return said[i] if said else WORDS[i % len(WORDS)]

        model = body.get("model", "dialogue")
        created = int(time.time())

        def chunk(delta: dict, finish=None, usage=None) -> str:
            c = {"id": "standin", "object": "chat.completion.chunk", "created": created, "model": model}
            c["choices"] = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]
            if usage:
                c["usage"] = usage
            return f"data: {json.dumps(c)}\n\n"

        if not body.get("stream"):
            await asyncio.sleep(ttft + n / rate)
            text = " ".join(word(i) for i in range(n))
            return JSONResponse(
                {
                    "id": "standin",
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n},
                }
            )

        async def events():
            start = time.perf_counter()
            await asyncio.sleep(ttft)
            yield chunk({"role": "assistant", "content": ""})
            for i in range(n):
                yield chunk({"content": word(i) + (" " if i < n - 1 else "")})
                lag = start + ttft + (i + 1) / rate - time.perf_counter()  # the pace holds however the loop runs
                if lag > 0:
                    await asyncio.sleep(lag)
            yield chunk({}, "stop")
            yield chunk({}, usage={"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])])


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ttft", type=float, default=0.05, help="seconds to the first token")
    ap.add_argument("--rate", type=float, default=60.0, help="tokens a second per stream")
    ap.add_argument("--tokens", type=int, default=200, help="tokens a reply")
    args = ap.parse_args()
    uvicorn.run(build(args.ttft, args.rate, args.tokens), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
