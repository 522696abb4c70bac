"""`limachat bench judge`: MT-Bench's judge (Zheng et al., 2023) over a bench run's answers.

- `single`: a 1-10 grade per reply; the second turn's reply is graded with the whole two-turn
  conversation in view; math, reasoning and coding against reference answers where the run has them.
- `pairwise`: per question and turn, each pair of checkpoints judged twice with the answers' positions
  swapped; the two games are kept as FastChat keeps them (a disagreement is a tie when counted).

The prompts are a file in FastChat's `judge_prompts.jsonl` layout (`name`, `type`, `system_prompt`,
`prompt_template`, `output_format`): limachat's own (curate/prompts/mt-bench-v<N>.jsonl), or the user's
copy of MT-Bench's. A template's fields say what it is for: `{question_2}` makes it a second-turn template,
`{ref_answer_1}` a reference-based one. The verdict is parsed as FastChat parses it (`[[rating]]`,
`[[A]]`/`[[B]]`/`[[C]]`); an output without one is kept with score -1 (single) or winner `error`
(pairwise). A request that fails is not stored: the next run asks it again.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
import string
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from limachat.curate.common import PROMPTS, annotator_name, bounded, reachable
from limachat.dialogues.bench import NEED_REFERENCE, answers, checkpoints_of, read_references
from limachat.dialogues.formats import FormatError

MODES = ("single", "pairwise")
FORMATS = {"single": "[[rating]]", "pairwise": "[[A]]"}
FIELDS = {  # (type, second turn) -> the fields its template may use
    ("single", False): {"question", "answer"},
    ("single", True): {"question_1", "question_2", "answer_1", "answer_2"},
    ("pairwise", False): {"question", "answer_a", "answer_b"},
    ("pairwise", True): {"question_1", "question_2", "answer_a_1", "answer_b_1", "answer_a_2", "answer_b_2"},
}
REFERENCE_FIELDS = {"ref_answer_1", "ref_answer_2"}
ONE_SCORE = re.compile(r"\[\[(\d+\.?\d*)\]\]")  # FastChat's patterns, the backup second
ONE_SCORE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
# With --constrain (vLLM's structured outputs), the judgment is free text that ends in its verdict.
CONSTRAINT = {"single": r"[^\[]{0,400}\[\[(10|[1-9])\]\]", "pairwise": r"[^\[]{0,400}\[\[[ABC]\]\]"}


@dataclass(frozen=True)
class Template:
    name: str
    type: str
    system_prompt: str
    prompt_template: str
    second_turn: bool
    reference: bool

    def render(self, **fields: str) -> str:
        return self.prompt_template.format(**fields)


@dataclass
class Prompts:
    tag: str  # names the judge annotator: `judge/<model>/<tag>`
    path: Path
    templates: dict[tuple[str, bool, bool], Template] = field(default_factory=dict)

    def get(self, mode: str, second_turn: bool, reference: bool) -> Template | None:
        return self.templates.get((mode, second_turn, reference))

    def need(self, mode: str, second_turn: bool, reference: bool) -> Template:
        t = self.get(mode, second_turn, reference)
        if t is None:
            what = ("the second turn" if second_turn else "the first turn") + (
                " against a reference answer" if reference else ""
            )
            fields = "{question_2}" if second_turn else "{question}"
            raise FormatError(
                f"{self.path}: no {mode} template for {what} (a line of type {mode!r} whose prompt_template "
                f"uses {fields}{' and {ref_answer_1}' if reference else ''})"
            )
        return t


def own_prompts(version: int | None = None) -> Path:
    found = {
        int(m.group(1)): p for p in PROMPTS.glob("mt-bench-v*.jsonl") if (m := re.search(r"-v(\d+)\.jsonl$", p.name))
    }
    if version is not None and version not in found:
        raise ValueError(f"--prompt-version: mt-bench has versions {', '.join(map(str, sorted(found)))}, not {version}")
    return found[version if version is not None else max(found)]


def load_prompts(path: Path | None = None) -> Prompts:
    """Judge prompts in FastChat's layout; each line checked (FILE:LINE), each template's role read off
    its fields. A line with another output format than its type's (FastChat's `[[rating_a,rating_b]]`)
    is not used."""
    own = path is None
    path = own_prompts() if own else Path(path)
    prompts = Prompts(path.stem if own else f"prompts-{path.stem}", path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise FormatError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise FormatError(f"{path}: not UTF-8 text") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise FormatError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(r, dict):
            raise FormatError(f"{where}: not a JSON object")
        missing = [k for k in ("name", "type", "prompt_template", "output_format") if not isinstance(r.get(k), str)]
        if missing:
            raise FormatError(
                f"{where}: a judge prompt needs {', '.join(missing)} (FastChat's judge_prompts.jsonl layout)"
            )
        if r["type"] not in MODES:
            raise FormatError(f"{where}: type must be single or pairwise, not {r['type']!r}")
        if r["output_format"] != FORMATS[r["type"]]:
            continue
        try:
            used = {f for _, f, _, _ in string.Formatter().parse(r["prompt_template"]) if f}
        except ValueError as e:
            raise FormatError(f"{where}: prompt_template: {e}") from None
        second = "question_2" in used
        allowed = FIELDS[(r["type"], second)] | REFERENCE_FIELDS
        if used - allowed:
            raise FormatError(
                f"{where}: prompt_template uses {', '.join(sorted(used - allowed))}; a {r['type']} "
                f"{'second-turn ' if second else ''}template may use {', '.join(sorted(allowed))}"
            )
        key = (r["type"], second, bool(used & REFERENCE_FIELDS))
        prompts.templates.setdefault(
            key, Template(r["name"], r["type"], str(r.get("system_prompt") or ""), r["prompt_template"], *key[1:])
        )
    return prompts


def score_of(judgment: str) -> float:
    """FastChat's parse of a grade; -1 when there is none."""
    m = ONE_SCORE.search(judgment) or ONE_SCORE_BACKUP.search(judgment)
    if not m:
        return -1.0
    try:
        return float(ast.literal_eval(m.group(1)))
    except (ValueError, SyntaxError):
        return -1.0


def winner_of(judgment: str) -> str:
    """FastChat's parse of a verdict: A, B, tie or error."""
    for mark, out in (("[[A]]", "A"), ("[[B]]", "B"), ("[[C]]", "tie")):
        if mark in judgment:
            return out
    return "error"


@dataclass
class Summary:
    judge: str
    mode: str
    asked: int = 0
    unparsed: int = 0
    failed: int = 0
    skipped: int = 0
    without_reference: int = 0
    too_long: int = 0  # prompts longer than the judge's context window: kept unjudged (score -1 / error)
    error: str | None = None
    scores: list[float] = field(default_factory=list)

    def line(self) -> str:
        what = "grades" if self.mode == "single" else "pairs (two games each)"
        out = f"{self.judge}: judged {self.asked - self.failed} {what}"
        if self.scores:
            out += f", mean grade {sum(self.scores) / len(self.scores):.2f}"
        out += f"; {self.unparsed} without a verdict (kept, score -1 / error); {self.skipped} already judged, skipped"
        if self.too_long:
            out += f"; {self.too_long} longer than the judge's context window (kept unjudged: give a judge with a longer one)"
        if self.without_reference:
            out += f"; {self.without_reference} graded without a reference answer (none given)"
        return out


def _jobs(store, run: str, mode: str, judge: str, runs: int, references: dict[str, list[str]]) -> tuple[list, int]:
    """What is left to judge: (question, turn, repeat, checkpoints' answers) per judgment; and how many are done."""
    questions = store.bench_questions(run)
    found = answers(store.bench_turns(run))
    order = checkpoints_of(store, run)
    done = {
        (j["question_id"], j["turn"], j["repeat"], j["model_1"], j["model_2"])
        for j in store.bench_judgments(run, mode, judge)
    }
    todo, skipped = [], 0
    for q in questions:
        for turn in range(1, min(2, len(q["record"]["turns"])) + 1):
            ready = [ck for ck in order if (q["id"], ck) in found and found[(q["id"], ck)].done(turn)]
            groups = [(ck,) for ck in ready] if mode == "single" else list(combinations(ready, 2))
            for repeat in range(runs):
                for group in groups:
                    key = (q["id"], turn, repeat, group[0], group[1] if len(group) > 1 else None)
                    if key in done:
                        skipped += 1
                        continue
                    todo.append((q, turn, repeat, [found[(q["id"], ck)] for ck in group], references.get(q["id"])))
    return todo, skipped


def _fields(q: dict, turn: int, texts: list[list[str]], reference: list[str] | None) -> dict[str, str]:
    turns = q["record"]["turns"]
    out: dict[str, str] = {}
    if reference:
        out.update(ref_answer_1=reference[0], ref_answer_2=reference[1] if len(reference) > 1 else "")
    if turn == 1:
        out["question"] = turns[0]
        if len(texts) == 1:
            out["answer"] = texts[0][0]
        else:
            out.update(answer_a=texts[0][0], answer_b=texts[1][0])
    else:
        out.update(question_1=turns[0], question_2=turns[1])
        if len(texts) == 1:
            out.update(answer_1=texts[0][0], answer_2=texts[0][1])
        else:
            out.update(answer_a_1=texts[0][0], answer_a_2=texts[0][1], answer_b_1=texts[1][0], answer_b_2=texts[1][1])
    return out


async def _ask(client, t, user_prompt: str, params: dict) -> str:
    messages = ([{"role": "system", "content": t.system_prompt}] if t.system_prompt else []) + [
        {"role": "user", "content": user_prompt}
    ]
    return (await client.complete(messages, params)).text


def run(
    store,
    endpoint,
    run_name: str,
    mode: str,
    *,
    prompts_file: Path | None = None,
    reference_file: Path | None = None,
    runs: int = 1,
    temperature: float = 0.0,
    max_tokens: int = 1024,
    constrain: bool = False,
    concurrency: int = 8,
    limit: int | None = None,
    progress_cls=None,
) -> Summary:
    """Judge the run's answers with `endpoint` (a Checkpoint with its base_url)."""
    from limachat.jobs import Progress
    from limachat.serve.client import ChatClient, ClientError, ContextTooLong

    prompts = load_prompts(prompts_file)
    prompts.need(mode, False, False)  # a template the mode needs, and the run itself: before any request
    prompts.need(mode, True, False)
    references = {
        q["id"]: q["record"]["reference"] for q in store.bench_questions(run_name) if q["record"].get("reference")
    }
    if reference_file is not None:
        references.update(read_references(Path(reference_file)))
    reachable(endpoint, "judge")
    judge = annotator_name("judge", endpoint, prompts.tag)
    store.register_annotator(judge, "judge", model=endpoint.model, endpoint=endpoint.base_url, prompt=prompts.tag)
    todo, skipped = _jobs(store, run_name, mode, judge, runs, references)
    todo = todo[:limit] if limit else todo
    summary = Summary(judge, mode, skipped=skipped)
    for q, turn, _, _, ref in todo:  # a reference template the run needs: checked before any request
        if q["category"].lower() in NEED_REFERENCE and ref:
            prompts.need(mode, turn == 2, True)
    client = ChatClient(endpoint, timeout=600)

    async def one(job) -> float | str | None:
        q, turn, repeat, group, ref = job
        needs_ref = q["category"].lower() in NEED_REFERENCE
        t = prompts.get(mode, turn == 2, True) if needs_ref and ref else prompts.get(mode, turn == 2, False)
        summary.without_reference += needs_ref and not ref
        params: dict[str, Any] = {"temperature": temperature, "max_tokens": max_tokens}
        if temperature > 0:
            params["seed"] = repeat
        if constrain:
            params["structured_outputs"] = {"regex": CONSTRAINT[mode]}
        texts = [a.texts() for a in group]
        common = dict(run=run_name, judge=judge, prompt=t.name, question_id=q["id"], turn=turn, repeat=repeat)
        first = _fields(q, turn, texts, ref)
        swapped = _fields(q, turn, texts[::-1], ref)
        too_long = False
        try:
            if mode == "single":
                judgment = await _ask(client, t, t.render(**first), params)
            else:
                g1, g2 = await asyncio.gather(
                    _ask(client, t, t.render(**first), params), _ask(client, t, t.render(**swapped), params)
                )
        except ContextTooLong as e:  # the same next time: kept as a judgment without a verdict, and said
            summary.too_long, too_long = summary.too_long + 1, True
            judgment = g1 = g2 = f"(not judged: {' '.join(str(e).split())})"
        except ClientError as e:
            summary.failed += 1
            summary.error = " ".join(str(e).split())
            return None
        a = group[0]
        if mode == "single":
            score = -1.0 if too_long else score_of(judgment)
            await store.aio.record_bench_judgment(
                mode="single", model_1=a.checkpoint, turn_1=a.replies[turn - 1]["id"], score=score,
                user_prompt=t.render(**first), judgment=judgment, **common,
            )  # fmt: skip
            return "too long" if too_long else score
        b = group[1]
        w1 = "error" if too_long else {"A": "model_1", "B": "model_2"}.get(winner_of(g1), winner_of(g1))
        w2 = "error" if too_long else {"A": "model_2", "B": "model_1"}.get(winner_of(g2), winner_of(g2))
        await store.aio.record_bench_judgment(
            mode="pairwise", model_1=a.checkpoint, turn_1=a.replies[turn - 1]["id"], model_2=b.checkpoint,
            turn_2=b.replies[turn - 1]["id"], g1_winner=w1, g2_winner=w2, user_prompt=t.render(**first),
            judgment=g1, g2_user_prompt=t.render(**swapped), g2_judgment=g2, **common,
        )  # fmt: skip
        return "too long" if too_long else "error" if "error" in (w1, w2) else w1

    unit = "grade" if mode == "single" else "pair"
    with (progress_cls or Progress)(f"bench judge ({mode})", total=len(todo), unit=unit) as bar:
        bar.message(f"{judge}: {len(todo)} to judge on {run_name}, {skipped} already judged")
        results = asyncio.run(bounded(todo, one, concurrency, bar))
        summary.asked = len(results)
        for r in results:
            if isinstance(r, float):
                if r == -1:
                    summary.unparsed += 1
                else:
                    summary.scores.append(r)
            elif r == "error":
                summary.unparsed += 1
        bar.finish(state="failed" if summary.failed else "done", message=summary.line())
    return summary
