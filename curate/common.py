"""What the judge and the teacher share: versioned prompts, how a conversation is shown to them, a
JSON answer asked for (constrained by a schema where the endpoint allows it, parsed leniently
where not), bounded concurrency with progress, and which turns the export filters pick."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from limachat.serve.checkpoints import Checkpoint

PROMPTS = Path(__file__).parent / "prompts"


@dataclass(frozen=True)
class Prompt:
    name: str  # label | score | pairwise | categorize | rubric | revise
    version: int
    text: str

    @property
    def tag(self) -> str:
        return f"{self.name}-v{self.version}"

    def render(self, **fields: str) -> str:
        return Template(self.text).safe_substitute(**fields)


def prompt(name: str, version: int | None = None) -> Prompt:
    """A prompt file of the package: `<name>-v<N>.txt`, the newest unless `version` is given. A shipped
    version is never edited (the annotators named after it would change meaning): add the next one."""
    found = {
        int(m.group(1)): p
        for p in PROMPTS.glob(f"{name}-v*.txt")
        if (m := re.fullmatch(rf"{name}-v(\d+)\.txt", p.name))
    }
    if not found:
        raise ValueError(f"no prompt named {name!r}")
    if version is None:
        version = max(found)
    if version not in found:
        raise ValueError(f"--prompt-version: {name} has versions {', '.join(map(str, sorted(found)))}, not {version}")
    return Prompt(name, version, found[version].read_text(encoding="utf-8"))


def reachable(endpoint: Checkpoint, role: str, fix: tuple[str, str] | None = None) -> None:
    """Stop before any work (and before storing a failure per turn) when the endpoint is not there.
    `fix`: what the user changes when it cannot be reached, and when it does not serve the model
    (default: curate.<role>'s settings and the --base-url and --model options)."""
    import httpx

    headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
    try:
        r = httpx.get(endpoint.base_url.rstrip("/") + "/models", headers=headers, timeout=10)
    except httpx.HTTPError as e:
        raise ValueError(
            f"{role} endpoint {endpoint.base_url}: cannot be reached ({type(e).__name__}); start "
            f"`limachat serve`, or {fix[0] if fix else f'set curate.{role}.base_url or --base-url'}"
        ) from None
    try:
        served = {m["id"] for m in r.json()["data"]} if r.status_code == 200 else None
    except (ValueError, KeyError, TypeError):
        served = None  # an endpoint without a model list: the first request tells
    if served is not None and endpoint.model not in served:
        raise ValueError(
            f"{role} endpoint {endpoint.base_url} does not serve {endpoint.model!r} (it serves "
            f"{', '.join(sorted(served))}); {fix[1] if fix else f'set curate.{role}.model or --model'}"
        )


def show(messages: list[dict[str, str]]) -> str:
    """A conversation as the judge reads it."""
    return (
        "\n\n".join(f"[{m['role'].upper()}]\n{m['content']}" for m in messages)
        or "(nothing: the reply opens the conversation)"
    )


def annotator_name(kind: str, endpoint: Checkpoint, tag: str) -> str:
    """`judge/<model>/<prompt>-v<N>`: a machine annotator is named after its model and prompt version."""
    return f"{kind}/{endpoint.model}/{tag}"


@dataclass
class Answer:
    data: dict[str, Any] | None  # the parsed JSON (only the keys asked for), None when nothing parsed
    raw: str
    error: str | None = None


def _lenient(text: str, schema: dict[str, Any]) -> dict[str, Any] | None:
    """The answer's JSON object; else each asked-for key found in the text (a reply cut off by its
    token limit still has the key asked for first)."""
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        try:
            data = json.loads(text[start : end + 1])
            if isinstance(data, dict):
                return data
        except ValueError:
            pass
    found: dict[str, Any] = {}
    for key, spec in schema["properties"].items():
        if spec.get("type") == "number":
            m = re.search(rf'"?{key}"?\s*[:=]\s*(-?\d+(?:\.\d+)?)', text)
            if m:
                found[key] = float(m.group(1))
        else:
            m = re.search(rf'"{key}"\s*:\s*"((?:[^"\\]|\\.)*)', text, re.S)
            if m:
                found[key] = m.group(1)
    return found or None


async def ask_json(
    client, text: str, schema: dict[str, Any], max_tokens: int, check: Callable[[dict], str | None]
) -> Answer:
    """Ask for a JSON answer at temperature 0. `check(data)` returns what is wrong with it, or None."""
    from limachat.serve.client import ClientError

    params: dict[str, Any] = {"temperature": 0, "max_tokens": max_tokens}
    if client.checkpoint.structured_outputs:
        params["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema, "strict": True},
        }
    try:
        done = await client.complete([{"role": "user", "content": text}], params)
    except ClientError as e:
        return Answer(None, e.partial, f"request failed: {e}")
    data = _lenient(done.text, schema)
    if data is None:
        return Answer(None, done.text, "no JSON answer found")
    data = {k: data[k] for k in schema["properties"] if k in data}
    problem = check(data)
    return Answer(None if problem else data, done.text, problem)


async def bounded(
    items: Iterable,
    work: Callable[[Any], Awaitable[Any]],
    concurrency: int,
    progress,
    weight: Callable[[Any], int] = lambda item: 1,
) -> list:
    """`work(item)` for every item, at most `concurrency` at once; progress advances by `weight(item)` as each ends."""
    gate = asyncio.Semaphore(concurrency)

    async def one(item):
        async with gate:
            result = await work(item)
        progress.update(weight(item))
        return result

    return await asyncio.gather(*(one(i) for i in items))


def assistant_turns(store, f) -> list[dict[str, Any]]:
    """Finished assistant turns of the sessions the export filters `f` pick (checkpoint, mode, dates,
    annotator: turns that annotator rated), oldest first."""
    sessions = store.sessions_where(f.mode, f.since, f.until)
    rated = {t for t, _, _ in store.current_ratings(f.annotator)} if f.annotator else None
    return [
        t
        for t in store.chain_turns()
        if t["role"] == "assistant"
        and t["status"] == "ok"
        and t["content"]
        and t["session_id"] in sessions
        and (f.checkpoint is None or t["checkpoint"] == f.checkpoint)
        and (rated is None or t["id"] in rated)
    ]
