"""`limachat bench answer`: each checkpoint answers a question file turn by turn, as FastChat's
gen_model_answer.py does (turn 1, then turn 2 on its own history; temperature by category, up to 1024 new
tokens), every reply stored as the app stores one, in a session of mode `bench` per question. A second
run answers only what is missing: a reply that failed is asked again under the same question."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from limachat.dialogues.bench import MAX_NEW_TOKENS, answers, temperature
from limachat.replies import stream_reply

PRESET = "mt-bench"  # what a bench reply records as its preset: FastChat's sampling, not the app's


@dataclass
class Summary:
    run: str
    questions: int
    answers: int = 0  # (question, checkpoint) answers asked for
    replies: int = 0  # replies asked this run
    failed: int = 0
    held: int = 0  # (question, checkpoint) answers already complete
    tokens: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        rate = f", {self.tokens / self.seconds:.1f} tokens/s" if self.seconds and self.tokens else ""
        out = (
            f"bench {self.run}: {self.questions} questions; {self.replies - self.failed} replies written "
            f"({self.tokens} tokens in {self.seconds:.0f} s{rate}); {self.held} of {self.answers} answers were complete "
            "before this run"
        )
        if self.failed:
            out += f"; {self.failed} failed ({self.errors[0]}): run the same command again to resume"
        return out


def pick(questions: list[dict], categories: tuple[str, ...] | None, limit: int | None) -> list[dict]:
    if categories:
        wanted = {c.lower() for c in categories}
        known = {q["category"].lower() for q in questions}
        unknown = sorted(wanted - known)
        if unknown:
            raise ValueError(
                f"--categories: no question of {', '.join(unknown)} (the file has {', '.join(sorted(known))})"
            )
        questions = [q for q in questions if q["category"].lower() in wanted]
    return questions[:limit] if limit else questions


def params_for(category: str, override: float | None, max_tokens: int | None, penalty: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "temperature": temperature(category) if override is None else override,
        "max_tokens": max_tokens or MAX_NEW_TOKENS,
    }
    if penalty is not None:  # LIMA's penalty, over the conversation's replies (limachat.serve.vllm_ext)
        out.update(generated_repetition_penalty=penalty, penalty_scope="conversation")
    return out


def run(
    store,
    settings,
    questions: list[dict],
    name: str,
    checkpoints: list,
    *,
    temperature_override: float | None = None,
    max_tokens: int | None = None,
    penalty: float | None = None,
    concurrency: int = 8,
    progress_cls=None,
) -> Summary:
    """Answer `questions` (`dialogues.bench.read_questions`) with each of `checkpoints` (Checkpoints with
    their endpoints)."""
    import time

    from limachat.jobs import Progress
    from limachat.serve.client import ChatClient

    store.add_bench_questions(name, questions)
    found = answers(store.bench_turns(name))
    summary = Summary(name, len(questions), answers=len(questions) * len(checkpoints))
    todo = []
    for q in questions:
        for ck in checkpoints:
            a = found.get((q["id"], ck.name))
            if a is not None and a.done(len(q["record"]["turns"])):
                summary.held += 1
            else:
                todo.append((q, ck, a))
    left = sum(len(q["record"]["turns"]) - (len(a.texts()) if a else 0) for q, _, a in todo)
    clients = {ck.name: ChatClient(ck, timeout=900) for ck in checkpoints}
    written: list[str] = []  # the replies this run finished

    async def one(job) -> None:
        q, ck, a = job
        turns = q["record"]["turns"]
        sid = a.session if a else await store.aio.bench_session(name, q["id"], q["category"])
        params = params_for(q["category"], temperature_override, max_tokens, penalty)
        parent, k = None, 0
        if a is not None:  # resume: the replies it has, then the failed or missing one
            k = len(a.texts())
            parent = a.replies[k - 1]["id"] if k else None
        while k < len(turns):
            user = a.users[k] if a is not None and k < len(a.users) and a.replies[k] is None else None
            if user is None:
                user = await store.aio.add_user_turn(sid, turns[k], parent_id=parent)
            a = None  # past the stored part
            stream = stream_reply(
                store.aio, clients[ck.name], sid, user, checkpoint=ck.name, preset=PRESET, wanted=params,
                context_window=settings.server.max_model_len,
            )  # fmt: skip
            reply = [r async for r in stream][-1]
            summary.replies += 1
            bar.update(1)
            if reply.status != "ok":
                summary.failed += 1
                summary.errors.append(" ".join(f"{ck.name}: {reply.detail or reply.error}".split()))
                return
            written.append(reply.turn_id)
            parent, k = reply.turn_id, k + 1

    async def all_() -> None:
        gate = asyncio.Semaphore(concurrency)

        async def gated(job):
            async with gate:
                await one(job)

        await asyncio.gather(*(gated(j) for j in todo))

    with (progress_cls or Progress)(f"bench answer ({name})", total=left, unit="reply") as bar:
        bar.message(
            f"{len(questions)} questions x {len(checkpoints)} checkpoints: {left} replies to write, "
            f"{summary.held} of {summary.answers} answers complete before this run"
        )
        start = time.monotonic()
        asyncio.run(all_())
        summary.seconds = time.monotonic() - start
        summary.tokens = sum(store.turn(t)["completion_tokens"] or 0 for t in written)
        bar.finish(state="failed" if summary.failed else "done", message=summary.line())
    return summary
