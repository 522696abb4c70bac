"""Benchmarks in FastChat's layout (MT-Bench, Zheng et al., 2023): questions in, each checkpoint's answers
read off the store, and FastChat's own files out and in, so its scripts (show_result.py,
compute_agreement.py) read what limachat wrote and limachat reads what they wrote.

The layout (FastChat's `fastchat/llm_judge/data/<bench>/`):
- `question.jsonl`: `question_id`, `category`, `turns` (the user turns), optional `reference`;
- `model_answer/<model>.jsonl`: `question_id`, `answer_id`, `model_id`, `choices` [{`index`, `turns`}], `tstamp`;
- `reference_answer/<model>.jsonl`: the same layout, reference answers;
- `model_judgment/<judge>_single.jsonl` and `<judge>_pair.jsonl`: the judge's grades and games;
- human votes: `question_id`, `model_a`, `model_b`, `winner` (model_a, model_b, tie), `judge`, `turn`.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from itertools import combinations
from pathlib import Path
from typing import Any

from limachat.dialogues.formats import BOM, FormatError, dumps

# FastChat's gen_model_answer.py: sampling temperature per MT-Bench category, and its reply limit.
TEMPERATURES = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
}
DEFAULT_TEMPERATURE = 0.7  # a category MT-Bench does not have
MAX_NEW_TOKENS = 1024
NEED_REFERENCE = ("math", "reasoning", "coding")  # graded against a reference answer
VOTE_WINNERS = ("model_a", "model_b", "tie")
EXPERT = "expert_"  # FastChat's compute_agreement.py counts a vote as a person's when its judge starts so


def read_questions(source: str | Path) -> list[dict[str, Any]]:
    """A question file in FastChat's layout, or a limachat prompt set (a bundled name or a file: the prompt
    opens, its scripted `turns` follow): `{"id", "category", "record"}` each, `record` in FastChat's layout."""
    from limachat.dialogues.study import prompt_set

    _, items = prompt_set(source)
    out = []
    for item in items:
        record = item.get("record") or {
            "question_id": item["id"],
            "category": item.get("category", "general"),
            "turns": [item["prompt"], *item.get("turns", ())],
        }
        out.append({"id": item["id"], "category": record.get("category", "general"), "record": record})
    return out


def temperature(category: str) -> float:
    return TEMPERATURES.get(category.lower(), DEFAULT_TEMPERATURE)


@dataclass
class Answer:
    """One checkpoint's conversation with one question: per exchange, its user turn and newest finished reply."""

    question_id: str
    checkpoint: str
    session: str
    users: list[str] = field(default_factory=list)
    replies: list[dict[str, Any] | None] = field(default_factory=list)

    def texts(self) -> list[str]:
        return [r["content"] for r in self.replies if r is not None]

    def done(self, turns: int) -> bool:
        return len(self.replies) >= turns and all(r is not None for r in self.replies[:turns])


def answers(turns: list[dict[str, Any]]) -> dict[tuple[str, str], Answer]:
    """(question id, checkpoint) -> Answer, from `Store.bench_turns`. A checkpoint's conversation starts at
    the first root whose replies are its own and follows, exchange by exchange, the newest finished reply."""
    children: dict[str | None, list[dict]] = defaultdict(list)
    roots: dict[str, list[dict]] = defaultdict(list)
    for t in turns:
        children[t["parent_id"]].append(t)
        if t["parent_id"] is None:
            roots[t["session_id"]].append(t)
    out: dict[tuple[str, str], Answer] = {}
    for session, users in roots.items():
        for root in users:
            for ck in dict.fromkeys(c["checkpoint"] for c in children[root["id"]] if c["role"] == "assistant"):
                key = (root["question_id"], ck)
                if key in out:
                    continue
                answer, user = Answer(root["question_id"], ck, session), root
                while user is not None:
                    ok = [
                        c
                        for c in children[user["id"]]
                        if c["role"] == "assistant" and c["checkpoint"] == ck and c["status"] == "ok"
                    ]
                    answer.users.append(user["id"])
                    answer.replies.append(ok[-1] if ok else None)
                    if not ok:
                        break
                    user = next((c for c in children[ok[-1]["id"]] if c["role"] == "user"), None)
                out[key] = answer
    return out


def checkpoints_of(store, run: str) -> list[str]:
    """The checkpoints that answered the run, in the order they first did."""
    return list(dict.fromkeys(ck for _, ck in answers(store.bench_turns(run))))


# -- FastChat's files out ------------------------------------------------------------------------------
def safe_name(name: str) -> str:
    """A model or judge name as a file name (FastChat names files after them)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def _stamp(iso: str | None) -> float:
    return datetime.fromisoformat(iso).timestamp() if iso else 0.0


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text("".join(dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


def judge_model(judge: str) -> str:
    """The model behind a judge annotator (`judge/<model>/<prompt>`)."""
    parts = judge.split("/")
    return "/".join(parts[1:-1]) if len(parts) >= 3 else judge


def export(store, run: str, folder: Path) -> dict[str, int]:
    """Write the run in FastChat's layout under `folder` (point FastChat's scripts at it as `data/<bench>`).
    Returns what was written, by kind. Only complete answers are written; judgments of the first repeat."""
    questions = store.bench_questions(run)
    record = {q["id"]: q["record"] for q in questions}
    turns_of = {q["id"]: len(q["record"]["turns"]) for q in questions}
    found = answers(store.bench_turns(run))
    counts: dict[str, int] = defaultdict(int)
    _jsonl(folder / "question.jsonl", [q["record"] for q in questions])
    counts["questions"] = len(questions)
    by_model: dict[str, list[dict]] = defaultdict(list)
    for q in questions:
        for (qid, ck), a in found.items():
            if qid == q["id"] and a.done(turns_of[qid]):
                last = a.replies[turns_of[qid] - 1]
                by_model[ck].append(
                    {
                        "question_id": record[qid]["question_id"],
                        "answer_id": f"{a.session}-{safe_name(ck)}",
                        "model_id": ck,
                        "choices": [{"index": 0, "turns": a.texts()[: turns_of[qid]]}],
                        "tstamp": _stamp(last["created"]),
                    }
                )
    for ck, rows in by_model.items():
        _jsonl(folder / "model_answer" / f"{safe_name(ck)}.jsonl", rows)
        counts["answers"] += len(rows)
    files: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for j in store.bench_judgments(run):
        if j["repeat"]:
            continue
        qid = record[j["question_id"]]["question_id"]
        judge = [judge_model(j["judge"]), j["prompt"]]
        if j["mode"] == "single":
            row = {
                "question_id": qid,
                "model": j["model_1"],
                "judge": judge,
                "user_prompt": j["user_prompt"],
                "judgment": j["judgment"],
                "score": j["score"],
                "turn": j["turn"],
                "tstamp": _stamp(j["created"]),
            }
        else:
            row = {
                "question_id": qid,
                "model_1": j["model_1"],
                "model_2": j["model_2"],
                "g1_winner": j["g1_winner"],
                "g2_winner": j["g2_winner"],
                "judge": judge,
                "g1_user_prompt": j["user_prompt"],
                "g1_judgment": j["judgment"],
                "g2_user_prompt": j["g2_user_prompt"],
                "g2_judgment": j["g2_judgment"],
                "turn": j["turn"],
                "tstamp": _stamp(j["created"]),
            }
        files[(safe_name(judge[0]), "single" if j["mode"] == "single" else "pair")].append(row)
    for (judge, kind), rows in files.items():
        _jsonl(folder / "model_judgment" / f"{judge}_{kind}.jsonl", rows)
        counts[f"{kind} judgments"] += len(rows)
    votes = people_votes(store, run)
    if votes:
        path = folder / "human_judgment" / f"{safe_name(run)}_human.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(votes, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        counts["human votes"] = len(votes)
    return dict(counts)


def people_votes(store, run: str) -> list[dict[str, Any]]:
    """People's verdicts on the run's answers as MT-Bench's human votes (a name is written `expert_<name>`,
    which is how FastChat's compute_agreement.py knows a person's vote)."""
    record = {q["id"]: q["record"] for q in store.bench_questions(run)}
    return [
        {
            "question_id": record[v["question_id"]]["question_id"],
            "model_a": v["checkpoint_a"],
            "model_b": v["checkpoint_b"],
            "winner": {"a": "model_a", "b": "model_b", "tie": "tie"}[v["verdict"]],
            "judge": v["annotator"] if v["annotator"].startswith(EXPERT) else EXPERT + v["annotator"],
            "turn": v["turn"],
        }
        for v in store.bench_verdicts(run)
    ]


# -- FastChat's files in -------------------------------------------------------------------------------
def _records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line, object) of a JSON Lines file, or of a JSON array (line 1 for each of its objects)."""
    try:
        text = path.read_bytes().removeprefix(BOM).decode("utf-8")
    except OSError as e:
        raise FormatError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise FormatError(f"{path}: not UTF-8 text") from None
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise FormatError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        rows = [(1, r) for r in data]
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as e:
                raise FormatError(f"{path}:{number}: not valid JSON ({e.msg})") from None
    for number, r in rows:
        if not isinstance(r, dict):
            raise FormatError(f"{path}:{number}: not a JSON object")
    if not rows:
        raise FormatError(f"{path}: nothing in it")
    return rows


def read_answers(path: Path) -> dict[str, list[tuple[str, list[str]]]]:
    """A FastChat model-answer file: model id -> [(question id, the reply to each turn)]."""
    out: dict[str, list[tuple[str, list[str]]]] = defaultdict(list)
    for number, r in _records(path):
        where = f"{path}:{number}"
        qid = r.get("question_id")
        if qid is None or isinstance(qid, bool):
            raise FormatError(f'{where}: an answer needs a "question_id"')
        choices = r.get("choices")
        turns = (
            choices[0].get("turns") if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
        )
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise FormatError(f'{where}: "choices" must hold {{"index": 0, "turns": [replies]}}')
        model = r.get("model_id") or path.stem
        if not isinstance(model, str):
            raise FormatError(f'{where}: "model_id" must be a string')
        out[model].append((str(qid), turns))
    return dict(out)


def read_references(path: Path) -> dict[str, list[str]]:
    """Reference answers in FastChat's layout (`reference_answer/<model>.jsonl`): question id -> per turn."""
    return {qid: turns for rows in read_answers(path).values() for qid, turns in rows}


def read_votes(path: Path) -> list[dict[str, Any]]:
    """Human votes in MT-Bench's layout (JSON Lines or a JSON array): each checked."""
    out = []
    for number, r in _records(path):
        where = f"{path}:{number}"
        missing = [k for k in ("question_id", "model_a", "model_b", "winner", "judge", "turn") if r.get(k) is None]
        if missing:
            raise FormatError(f"{where}: a vote needs {', '.join(missing)}")
        if r["winner"] not in VOTE_WINNERS:
            raise FormatError(f"{where}: winner must be one of {', '.join(VOTE_WINNERS)}, not {r['winner']!r}")
        if not isinstance(r["turn"], int) or isinstance(r["turn"], bool) or r["turn"] < 1:
            raise FormatError(f"{where}: turn must be 1, 2, ...")
        out.append({**r, "question_id": str(r["question_id"]), "judge": str(r["judge"])})
    return out


def add_answers(store, run: str, path: Path, name: str | None = None) -> dict[str, int]:
    """A FastChat model-answer file joins the run as one more checkpoint per model id (`name` renames a
    file of one model). Answers already held, and answers to questions the run does not hold, are counted
    and left."""
    questions = {q["id"]: q for q in store.bench_questions(run)}
    by_model = read_answers(path)
    if name and len(by_model) > 1:
        raise FormatError(f"{path}: --checkpoint names one model, and the file holds {len(by_model)}")
    have = answers(store.bench_turns(run))
    counts = {"added": 0, "held": 0, "unknown": 0}
    for model, rows in by_model.items():
        ck = name or model
        for qid, turns in rows:
            q = questions.get(qid)
            if q is None:
                counts["unknown"] += 1
            elif (qid, ck) in have:
                counts["held"] += 1
            else:
                store.add_bench_answer(run, q, ck, turns)
                counts["added"] += 1
    return counts


def add_votes(store, run: str, path: Path) -> dict[str, int]:
    """Human votes join as people's verdicts between the two models' replies at the vote's turn (a vote on
    answers the run does not hold is counted and left)."""
    votes = read_votes(path)
    have = answers(store.bench_turns(run))
    counts = {"added": 0, "no answer": 0}
    for v in votes:
        a, b = have.get((v["question_id"], v["model_a"])), have.get((v["question_id"], v["model_b"]))
        t = v["turn"] - 1
        if a is None or b is None or len(a.replies) <= t or len(b.replies) <= t or not a.replies[t] or not b.replies[t]:
            counts["no answer"] += 1
            continue
        verdict = {"model_a": "a", "model_b": "b", "tie": "tie"}[v["winner"]]
        store.verdict(a.session, a.replies[t]["id"], b.replies[t]["id"], verdict, v["judge"])
        counts["added"] += 1
    return counts


@dataclass(frozen=True)
class Exchange:
    """Two checkpoints' replies to one question at one turn: what a person compares in the Compare tab."""

    run: str
    question_id: str
    a: Answer
    b: Answer
    turn: int

    @property
    def key(self) -> str:
        """The value the Compare tab's resume list carries for it."""
        return "|".join(("bench", self.run, self.question_id, self.a.checkpoint, self.b.checkpoint, str(self.turn)))


def exchanges(store, run: str) -> list[Exchange]:
    """Every (question, pair of checkpoints, turn) both checkpoints answered, in question order."""
    found = answers(store.bench_turns(run))
    order = list(dict.fromkeys(ck for _, ck in found))
    out = []
    for q in store.bench_questions(run):
        ready = [found[(q["id"], ck)] for ck in order if (q["id"], ck) in found]
        for a, b in combinations(ready, 2):
            for t in range(min(len(a.texts()), len(b.texts()))):
                out.append(Exchange(run, q["id"], a, b, t + 1))
    return out


def exchange(store, key: str) -> Exchange:
    """The exchange a resume-list value names (`Exchange.key`)."""
    parts = key.split("|")
    if len(parts) != 6 or parts[0] != "bench":
        raise ValueError(f"not a bench exchange: {key!r}")
    _, run, qid, a, b, turn = parts
    for x in exchanges(store, run):
        if (x.question_id, x.a.checkpoint, x.b.checkpoint, str(x.turn)) == (qid, a, b, turn):
            return x
    raise ValueError(f"bench {run}: no answers of {a} and {b} to question {qid} at turn {turn}")
