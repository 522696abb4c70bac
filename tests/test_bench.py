"""`limachat bench`: FastChat's question, answer, judgment and vote files in and out; MT-Bench's judge
protocol (templates by their fields, FastChat's parsing, both orders); the report's figures against hand
counts; the answers in the Compare tab; and, on the real server, answers, judgments and a report of the
bundled checkpoints, resumed, with the endpoint going away half-way."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from limachat.curate import bench_judge
from limachat.dialogues import bench, bench_report
from limachat.dialogues.formats import FormatError, load_prompts
from limachat.dialogues.store import Store

DATA = Path(__file__).parent / "data" / "bench"
QUESTIONS = DATA / "questions.jsonl"


# -- a loader written to FastChat's documented layout (fastchat/llm_judge), independent of limachat's --
def fastchat_layout(folder: Path) -> dict:
    """Read `folder` as FastChat's scripts do: questions by id, answers by model (file stem) and id,
    judgments per file."""
    out = {"questions": {}, "answers": {}, "single": [], "pair": []}
    for line in (folder / "question.jsonl").read_text().splitlines():
        q = json.loads(line)
        assert set(q) >= {"question_id", "category", "turns"}
        out["questions"][q["question_id"]] = q
    for path in sorted((folder / "model_answer").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            a = json.loads(line)
            assert set(a) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
            assert a["choices"][0]["index"] == 0 and isinstance(a["tstamp"], float)
            out["answers"].setdefault(path.stem, {})[a["question_id"]] = a
    for path in sorted((folder / "model_judgment").glob("*.jsonl")):
        kind = "single" if path.name.endswith("_single.jsonl") else "pair"
        for line in path.read_text().splitlines():
            j = json.loads(line)
            keys = {"question_id", "model", "judge", "user_prompt", "judgment", "score", "turn", "tstamp"}
            if kind == "pair":
                keys = {"question_id", "model_1", "model_2", "g1_winner", "g2_winner", "judge", "g1_user_prompt"}
                keys |= {"g1_judgment", "g2_user_prompt", "g2_judgment", "turn", "tstamp"}
            assert set(j) == keys and len(j["judge"]) == 2
            out[kind].append(j)
    return out


def show_result(folder: Path, mode: str, judge: str) -> str:
    """FastChat's own show_result.py (from the fschat wheel), as is, on `folder` laid out as data/mt_bench."""
    root = folder.parents[1]
    assert folder == root / "data" / "mt_bench"
    done = subprocess.run(
        [sys.executable, "-m", "fastchat.llm_judge.show_result", "--mode", mode, "--judge-model", judge],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def shown_means(text: str, section: str) -> dict[str, float]:
    """model -> score from one section of show_result's single-mode output."""
    part = text.split(f"########## {section} ##########")[1].split("##########")[0]
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\S+)\s+(?:\d\s+)?(-?\d+\.\d+)$", part, re.M)}


# -- questions ---------------------------------------------------------------------------------------
def test_question_files_and_prompt_sets_read_as_fastchat_questions(tmp_path):
    qs = bench.read_questions(QUESTIONS)
    assert [q["id"] for q in qs] == ["1", "2", "3", "q4"]
    assert qs[1]["category"] == "math" and qs[1]["record"]["reference"] == ["84", "100"]
    assert qs[0]["record"] == json.loads(QUESTIONS.read_text().splitlines()[0])  # kept exactly as read
    # a prompt set works everywhere a question file does, and the other way round
    scripted = bench.read_questions("scripted")
    assert len(scripted) == 12 and all(len(q["record"]["turns"]) == 3 for q in scripted)
    assert scripted[0]["record"]["category"] == "general"
    items = load_prompts(QUESTIONS)  # what study create --prompts and the Study tab read
    assert items[0]["prompt"].startswith("Write a two-sentence note") and items[0]["turns"] == [
        "Now make it sound more formal."
    ]
    assert items[3]["id"] == "q4" and "turns" in items[3]
    assert bench.temperature("writing") == 0.7 and bench.temperature("math") == 0.0 and bench.temperature("STEM") == 0.1


def test_a_study_and_an_ablation_take_a_fastchat_question_file(tmp_path, clean_env):
    from click.testing import CliRunner

    from limachat.cli import main
    from limachat.dialogues.study import plan, prompt_set

    env = {"LIMACHAT_HOME": str(tmp_path / "home")}
    out = CliRunner().invoke(
        main,
        ["study", "create", "mt", "--checkpoints", "zero-shot,dialogue", "--prompts", str(QUESTIONS), "--turns", "2"],
        env=env,
    )
    assert out.exit_code == 0, out.output
    store = Store(tmp_path / "home" / "limachat.db")
    st = store.study("mt")
    slots = plan(st, "ana")
    assert {s.prompt for s in slots} <= {q["record"]["turns"][0] for q in bench.read_questions(QUESTIONS)}
    assert all(len(s.turns) == 1 for s in slots)  # the second turn is the scripted follow-up
    assert prompt_set(str(QUESTIONS))[0] == "questions.jsonl"


# -- judge prompts -----------------------------------------------------------------------------------
def _fastchat_style(tmp_path: Path) -> Path:
    """A prompt file shaped like FastChat's judge_prompts.jsonl (its names and fields; texts written here)."""
    lines = [
        ("single-v1", "single", "[[rating]]", "Q: {question} A: {answer}"),
        ("single-math-v1", "single", "[[rating]]", "Q: {question} Ref: {ref_answer_1} A: {answer}"),
        ("single-v1-multi-turn", "single", "[[rating]]", "{question_1} {answer_1} {question_2} {answer_2}"),
        (
            "single-math-v1-multi-turn",
            "single",
            "[[rating]]",
            "{question_1} {ref_answer_1} {answer_1} {question_2} {ref_answer_2} {answer_2}",
        ),
        ("pair-v1", "pairwise", "[[rating_a,rating_b]]", "{question} {answer_a} {answer_b}"),
        ("pair-v2", "pairwise", "[[A]]", "{question} {answer_a} {answer_b}"),
        (
            "pair-v2-multi-turn",
            "pairwise",
            "[[A]]",
            "{question_1} {answer_a_1} {answer_b_1} {question_2} {answer_a_2} {answer_b_2}",
        ),
    ]
    path = tmp_path / "judge_prompts.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {
                    "name": n,
                    "type": t,
                    "system_prompt": "Be fair.",
                    "prompt_template": p,
                    "description": "",
                    "category": "general",
                    "output_format": f,
                }
            )
            + "\n"
            for n, t, f, p in lines
        )
    )
    return path


def test_judge_prompts_are_told_apart_by_their_fields(tmp_path):
    own = bench_judge.load_prompts()
    assert own.tag == "mt-bench-v1" and len(own.templates) == 8
    for mode in ("single", "pairwise"):
        for second in (False, True):
            for ref in (False, True):
                assert own.need(mode, second, ref).type == mode
    theirs = bench_judge.load_prompts(_fastchat_style(tmp_path))
    assert theirs.tag == "prompts-judge_prompts"
    assert theirs.need("single", True, True).name == "single-math-v1-multi-turn"
    assert theirs.need("pairwise", False, False).name == "pair-v2"  # pair-v1's other output format is not used
    with pytest.raises(
        FormatError, match=r"judge_prompts.jsonl: no pairwise template for the first turn against a reference"
    ):
        theirs.need("pairwise", False, True)


def test_verdicts_parse_as_fastchat_parses_them():
    assert bench_judge.score_of("Clear and correct. Rating: [[8]]") == 8.0
    assert bench_judge.score_of("fine [[7.5]] then [[2]]") == 7.5  # the first one, as re.search finds
    assert bench_judge.score_of("grade [6] only") == 6.0  # FastChat's backup pattern
    assert bench_judge.score_of("no grade at all") == -1.0
    assert [bench_judge.winner_of(t) for t in ("x [[A]]", "[[B]] wins", "a tie [[C]]", "both good")] == [
        "A",
        "B",
        "tie",
        "error",
    ]


# -- the report against hand counts --------------------------------------------------------------------
def _run_by_hand(path: Path) -> tuple[Store, dict]:
    """Three checkpoints' answers to the four test questions, a judge's grades and games, people's votes."""
    store = Store(path)
    qs = bench.read_questions(QUESTIONS)
    store.add_bench_questions("hand", qs)
    texts = {"x": "short", "y": "a somewhat longer reply", "z": "mid reply"}
    for ck, text in texts.items():
        for q in qs:
            store.add_bench_answer("hand", q, ck, [f"{text} {i}" for i in range(len(q["record"]["turns"]))])
    judge = "judge/test/mt-bench-v1"
    store.register_annotator(judge, "judge", model="test", prompt="mt-bench-v1")
    found = bench.answers(store.bench_turns("hand"))
    grades = {  # (checkpoint, question) -> (turn 1, turn 2); -1: no rating in the output
        ("x", "1"): (4, 5), ("x", "2"): (2, -1), ("x", "3"): (6, 6), ("x", "q4"): (8, 3),
        ("y", "1"): (6, 7), ("y", "2"): (5, 5), ("y", "3"): (7, 9), ("y", "q4"): (8, 5),
    }  # fmt: skip
    for (ck, q), scores in grades.items():
        for turn, score in enumerate(scores, 1):
            reply = found[(q, ck)].replies[turn - 1]["id"]
            for repeat, delta in enumerate((0, 1, -1)):  # three runs; the median is the middle one
                s = score if score == -1 else score + delta
                store.record_bench_judgment(
                    "hand",
                    judge,
                    "grade",
                    "single",
                    q,
                    turn,
                    ck,
                    reply,
                    repeat=repeat,
                    score=s,
                    user_prompt="p",
                    judgment="j",
                )
    games = {("1", 1): ("model_2", "model_2"), ("2", 1): ("model_2", "model_1"), ("3", 1): ("tie", "model_2"),
             ("q4", 1): ("model_1", "model_1"), ("1", 2): ("model_2", "model_2"), ("2", 2): ("error", "model_2")}  # fmt: skip
    for (q, turn), (g1, g2) in games.items():
        a, b = found[(q, "x")], found[(q, "y")]
        store.record_bench_judgment(
            "hand", judge, "compare", "pairwise", q, turn, "x", a.replies[turn - 1]["id"], model_2="y",
            turn_2=b.replies[turn - 1]["id"], g1_winner=g1, g2_winner=g2, user_prompt="p1", judgment=f"[[{g1}]]",
            g2_user_prompt="p2", g2_judgment=f"[[{g2}]]",
        )  # fmt: skip
    # people: ana and bo on turn 1 of questions 1 and q4, and on turn 2 of question 1
    for who, q, turn, verdict in (
        ("ana", "1", 1, "b"),
        ("bo", "1", 1, "b"),
        ("ana", "q4", 1, "a"),
        ("bo", "q4", 1, "tie"),
        ("ana", "1", 2, "a"),
        ("bo", "1", 2, "a"),
    ):
        a, b = found[(q, "x")], found[(q, "y")]
        store.verdict(a.session, a.replies[turn - 1]["id"], b.replies[turn - 1]["id"], verdict, who)
    return store, {"judge": judge, "found": found}


def test_the_report_matches_hand_counts(tmp_path):
    store, ctx = _run_by_hand(tmp_path / "b.db")
    r = bench_report.build(store, "hand")
    assert r.checkpoints == ["x", "y", "z"] and r.answered == {"x": 4, "y": 4, "z": 4}
    g = r.grades
    assert g.runs == 3 and g.unparsed == 3 and g.graded == 48  # 16 grades x 3 runs; x's q2 turn 2 never parsed
    assert g.by["x"][1].value == pytest.approx((4 + 2 + 6 + 8) / 4)
    assert g.by["x"][2].value == pytest.approx((5 + 6 + 3) / 3)  # the -1 is left out, as show_result leaves it
    assert g.by["y"][0].value == pytest.approx((6 + 7 + 5 + 5 + 7 + 9 + 8 + 5) / 8)
    assert g.by["x"][1].low <= g.by["x"][1].value <= g.by["x"][1].high
    assert "z" in g.by and all(v.value != v.value for v in g.by["z"].values())  # nan: z was never graded
    gaps = {(f, o, t): (e.value, n) for f, o, t, e, n in g.gaps}
    assert gaps[("x", "y", 1)] == (pytest.approx((2 + 3 + 1 + 0) / 4), 4)
    assert gaps[("x", "y", 2)] == (pytest.approx((2 + 3 + 2) / 3), 3)  # paired: only questions both were graded on
    assert g.categories["math"] == {"x": 2.0, "y": 5.0}
    assert g.run_means["x"] == pytest.approx([34 / 7, 41 / 7, 27 / 7])  # each run's mean: +1 and -1 around the middle
    p = r.games
    by = {(x["turn"]): x for x in p.pairs}
    assert (by[1]["win"], by[1]["loss"], by[1]["tie"]) == (1, 1, 2)  # q4 x wins; q1 y wins; q2, q3 disagree -> tie
    assert by[1]["win_rate"].value == pytest.approx((1 + 0.5 * 2) / 4)
    assert (by[2]["win"], by[2]["loss"], by[2]["tie"]) == (0, 1, 0)  # the game with an error is left out
    assert p.errors == 1 and p.consistent == (3, 5)
    # 10 decisive games; the answer shown first (model_1 in game 1, model_2 in game 2) won q4's game 1 and
    # game 2 of q1 turn 1, q3, q1 turn 2 and q2 turn 2
    assert p.first_wins == (5, 10)
    assert p.longer_wins == (7, 10)  # y's replies are the longer ones: y won 7 of the 10 decisive games
    turn1, turn2 = r.agreement
    # turn 1: question 1, judge says y (model_b) and ana, bo say b; question q4, judge x (model_a), ana a, bo tie
    assert turn1.judge_people == ((3, 4), (3, 3)) and turn1.people == ((1, 2), (1, 1))
    assert turn2.judge_people == ((0, 2), (0, 2)) and turn2.people == ((1, 1), (1, 1))
    md = bench_report.markdown(r)
    assert "| x | 5.00 [" in md and "66%" in md and "85%" in md and "63%" in md and "81%" in md
    page = bench_report.to_html(r)
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page and "<script" not in page
    with pytest.raises(ValueError, match="--runs 4: judge/test/mt-bench-v1 judged run hand 3 time"):
        bench_report.build(store, "hand", runs=4)
    assert bench_report.build(store, "hand", runs=1).grades.by["x"][1].value == pytest.approx(5.0)


def test_export_reads_back_in_fastchat_layout_and_fastchat_scripts_run_on_it(tmp_path):
    store, ctx = _run_by_hand(tmp_path / "b.db")
    folder = tmp_path / "fc" / "data" / "mt_bench"
    counts = bench.export(store, "hand", folder)
    assert counts == {"questions": 4, "answers": 12, "single judgments": 16, "pair judgments": 6, "human votes": 6}
    got = fastchat_layout(folder)
    assert set(got["questions"]) == {1, 2, 3, "q4"}  # ids keep their type
    assert set(got["answers"]) == {"x", "y", "z"}
    assert got["answers"]["y"][2]["choices"][0]["turns"] == ["a somewhat longer reply 0", "a somewhat longer reply 1"]
    # the per-turn means of the files equal the store's (first run; -1 left out), and FastChat's own script agrees
    means: dict[tuple[str, int], list[float]] = defaultdict(list)
    for j in got["single"]:
        assert j["judge"] == ["test", j["judge"][1]]
        if j["score"] != -1:
            means[(j["model"], j["turn"])].append(j["score"])
    first_run = bench_report.build(store, "hand", runs=1).grades
    for (model, turn), scores in means.items():
        assert sum(scores) / len(scores) == pytest.approx(first_run.by[model][turn].value)
    single = show_result(folder, "single", "test")
    assert shown_means(single, "First turn") == pytest.approx({"x": 5.0, "y": 6.5})
    assert shown_means(single, "Second turn") == pytest.approx({"x": 14 / 3, "y": 6.5})
    pairwise = show_result(folder, "pairwise-all", "test")
    assert re.search(r"^x\s+1\s+2\s+2\s", pairwise, re.M), pairwise  # win, loss, tie as FastChat counts them
    votes = json.loads(next((folder / "human_judgment").glob("*.json")).read_text())
    assert {v["judge"] for v in votes} == {"expert_ana", "expert_bo"}
    done = subprocess.run(
        [sys.executable, "-m", "fastchat.llm_judge.compute_agreement", "--judges", "human", "human", "--votefiles", str(next((folder / "human_judgment").glob("*.json")))],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (
        "turn 1 with tie. #total: 2, #agree: 1" in done.stdout
        and "turn 2 with tie. #total: 1, #agree: 1" in done.stdout
    )


def test_import_adds_a_published_model_and_expert_votes(tmp_path):
    store, ctx = _run_by_hand(tmp_path / "b.db")
    folder = tmp_path / "fc"
    bench.export(store, "hand", folder)
    # a published model's answers, as FastChat writes them: one more checkpoint; a second import adds nothing
    other = tmp_path / "model_answer" / "published-7b.jsonl"
    other.parent.mkdir()
    rows = [
        {"question_id": qid, "answer_id": f"a{i}", "model_id": "published-7b", "choices": [{"index": 0, "turns": [f"p{qid}", "p2"]}], "tstamp": 1.0}
        for i, qid in enumerate([1, 2, 3, "q4", 99])
    ]  # fmt: skip
    other.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert bench.add_answers(store, "hand", other) == {"added": 4, "held": 0, "unknown": 1}
    assert bench.add_answers(store, "hand", other) == {"added": 0, "held": 4, "unknown": 1}
    assert bench.checkpoints_of(store, "hand")[-1] == "published-7b"
    # its answers are sessions of mode bench like the rest: export sees them, the judge would too
    from limachat.dialogues.export import Filters, chains

    assert sum(1 for c in chains(store, Filters(mode="bench")) if "published-7b" in c.provenance()["checkpoints"]) == 4
    votes = tmp_path / "expert.json"
    votes.write_text(
        json.dumps(
            [
                {"question_id": 1, "model_a": "published-7b", "model_b": "x", "winner": "model_a", "judge": "expert_0", "turn": 1},
                {"question_id": 2, "model_a": "gpt-4", "model_b": "x", "winner": "tie", "judge": "expert_1", "turn": 1},
            ]
        )
    )  # fmt: skip
    assert bench.add_votes(store, "hand", votes) == {"added": 1, "no answer": 1}
    assert any(
        v["annotator"] == "expert_0" and v["checkpoint_a"] == "published-7b" for v in store.bench_verdicts("hand")
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"question_id": 1, "model_id": "m", "choices": [{"index": 0, "turns": ["ok"]}]}\n{"question_id": 2, "choices": []}\n'
    )
    with pytest.raises(FormatError, match=rf'^{bad}:2: "choices" must hold'):
        bench.add_answers(store, "hand", bad)


def test_bench_answers_open_in_the_compare_tab_for_ratings_and_verdicts(tmp_path):
    from limachat.demo import compare
    from limachat.demo.answer import Deps
    from limachat.settings import Settings

    store, ctx = _run_by_hand(tmp_path / "b.db")
    deps = Deps(store, {}, Settings(home=tmp_path))
    listed = dict((v, k) for k, v in compare.sessions(deps))
    key = "bench|hand|2|x|y|1"
    assert listed[key] == "bench hand · question 2 · x vs y · turn 1"
    assert "bench|hand|3|y|z|2" in listed
    state, va, vb = compare.resume(deps, key, "cy")
    assert [m["content"] for m in va.history] == ["What is 12 times 7?", "short 0"]
    assert [m["content"] for m in vb.history] == ["What is 12 times 7?", "a somewhat longer reply 0"]
    compare.rate(deps, state, "b", 1, "Excellent", "cy")
    line = compare.verdict(deps, state, "b", "cy")
    assert line == "Your verdicts: turn 1: y better."
    mine = [v for v in store.bench_verdicts("hand") if v["annotator"] == "cy"]
    assert [(v["question_id"], v["turn"], v["checkpoint_b"], v["verdict"]) for v in mine] == [("2", 1, "y", "b")]
    with pytest.raises(ValueError, match="take no more messages"):
        import asyncio

        async def send():
            async for _ in compare.send(deps, state, "more?", "x", "y", False, "cy"):
                pass

        asyncio.run(send())


class TooLong:
    """A stand-in judge endpoint whose every chat request is longer than its context window (vLLM's own HTTP
    400 and message): what a 2048-token judge answers a second turn of two 1024-token replies."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "base", "object": "model"}]})

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                message = (
                    "This model's maximum context length is 2048 tokens. However, your prompt contains at least "
                    "2049 input tokens, which exceeds this limit even without any output tokens."
                )
                self._send(400, {"error": {"message": message, "type": "BadRequestError", "code": 400}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_a_prompt_longer_than_the_judges_context_is_kept_unjudged_not_retried(tmp_path):
    from limachat.serve.checkpoints import Checkpoint

    store, _ = _run_by_hand(tmp_path / "b.db")
    judge = TooLong()
    try:
        endpoint = Checkpoint(name="judge", model="base", base_url=judge.url)
        quiet = type("Quiet", (), {"__init__": lambda s, *a, **k: None, "__enter__": lambda s: s,
                                   "__exit__": lambda s, *a: None, "message": lambda s, *a: None,
                                   "update": lambda s, *a: None, "finish": lambda s, *a, **k: None})  # fmt: skip
        first = bench_judge.run(store, endpoint, "hand", "single", progress_cls=quiet)
        assert (first.too_long, first.failed, first.unparsed) == (24, 0, 0)  # 3 checkpoints x 4 questions x 2 turns
        assert "24 longer than the judge's context window (kept unjudged" in first.line()
        rows = store.bench_judgments("hand", "single", first.judge)
        assert len(rows) == 24 and all(
            r["score"] == -1 and r["judgment"].startswith("(not judged: prompt too long") for r in rows
        )
        again = bench_judge.run(store, endpoint, "hand", "single", progress_cls=quiet)
        assert (again.asked, again.skipped) == (0, 24)  # the same next time: not asked again
    finally:
        judge.server.shutdown()
        judge.server.server_close()


# -- on the real server ------------------------------------------------------------------------------
class GoesAway:
    """A stand-in for an endpoint that goes away half-way (a healthy server cannot be made to on demand):
    it forwards the first `answered` chat requests to the real server, then drops the next one's
    connection and stops listening."""

    def __init__(self, upstream: str, answered: int):
        self.upstream, self.left = upstream.removesuffix("/v1"), answered
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if method == "POST":
                    if outer.left <= 0:
                        threading.Thread(target=outer.stop, daemon=True).start()
                        self.close_connection = True
                        return  # no answer at all: the connection closes under the client
                    outer.left -= 1
                r = httpx.request(
                    method, outer.upstream + self.path, content=body or None,
                    headers={k: self.headers[k] for k in ("Authorization", "Content-Type") if self.headers.get(k)}, timeout=300,
                )  # fmt: skip
                self.send_response(r.status_code)
                self.send_header("Content-Type", r.headers.get("content-type", "application/json"))
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            def do_GET(self):
                self._forward("GET")

            def do_POST(self):
                self._forward("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Stop serving and stop listening: a new connection is refused, as by a server that is gone."""
        self.server.shutdown()
        self.server.server_close()

    def close(self) -> None:
        self.server.server_close()


def _cli(home: Path, server, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIMACHAT_")}
    env.update(LIMACHAT_HOME=str(home), LIMACHAT_SERVER__PORT=str(server.port), LIMACHAT_SERVER__BASE=server.base)
    return subprocess.run(
        [sys.executable, "-m", "limachat.cli", *args], cwd=home, capture_output=True, text=True, env=env, timeout=900
    )


def _last_line(done: subprocess.CompletedProcess) -> str:
    return (
        [line for line in done.stderr.strip().splitlines() if line.strip()][-1]
        if done.returncode
        else done.stdout.strip().splitlines()[-1]
    )


def test_bench_on_the_real_server_answers_judges_resumes_and_exports(vllm_server, tmp_path):
    """The bundled checkpoints answer three questions (replies cut at 32 tokens: their length is not what
    this checks), the local `base` judges them in both modes, a second run of each does nothing, the
    report and FastChat's show_result agree; a checkpoint the server does not serve stops in one line."""
    home = tmp_path / "home"
    vllm_server.share_key(home)
    done = _cli(home, vllm_server, "bench", "answer", str(QUESTIONS), "--name", "real", "--checkpoints", "zero-shot,dialogue", "--limit", "3", "--max-tokens", "32")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "bench real: 3 questions; 12 replies written" in done.stdout
    store = Store(home / "limachat.db")
    found = bench.answers(store.bench_turns("real"))
    assert sorted(found) == [(q, ck) for q in ("1", "2", "3") for ck in ("dialogue", "zero-shot")]
    for (qid, _), a in found.items():
        assert a.done(2)
        turns = {t["id"]: t for t in store.turns(a.session)}
        second_user = turns[a.users[1]]
        assert second_user["parent_id"] == a.replies[0]["id"]  # turn 2 answered on the checkpoint's own history
        reply = turns[a.replies[0]["id"]]
        assert reply["preset"] == "mt-bench" and reply["params"]["max_tokens"] == 32
        assert reply["params"]["temperature"] == {"1": 0.7, "2": 0.0, "3": 0.7}[qid]  # FastChat's per category
        assert store.session(a.session)["mode"] == "bench"
    again = _cli(home, vllm_server, "bench", "answer", str(QUESTIONS), "--name", "real", "--checkpoints", "zero-shot,dialogue", "--limit", "3")  # fmt: skip
    assert (
        again.returncode == 0
        and "0 replies written" in again.stdout
        and "6 of 6 answers were complete before this run" in again.stdout
    )
    sessions = len(store.sessions(limit=1000))
    nope = _cli(home, vllm_server, "bench", "answer", str(QUESTIONS), "--name", "real", "--checkpoints", "zero-shot,nope")  # fmt: skip
    assert nope.returncode == 1 and "Traceback" not in nope.stderr
    assert "checkpoint 'nope': endpoint" in _last_line(nope) and "does not serve 'nope'" in _last_line(nope)
    assert len(store.sessions(limit=1000)) == sessions

    for mode, made in (("single", 12), ("pairwise", 6)):
        judged = _cli(home, vllm_server, "bench", "judge", "real", "--mode", mode, "--max-tokens", "48")
        assert judged.returncode == 0, judged.stderr
        assert len(store.bench_judgments("real", mode)) == made
        assert (
            _cli(home, vllm_server, "bench", "judge", "real", "--mode", mode).stdout.count(f"{made} already judged")
            == 1
        )
    grades = store.bench_judgments("real", "single")
    assert {j["judge"] for j in grades} == {"judge/base/mt-bench-v1"}
    assert all(j["score"] == -1 or 1 <= j["score"] <= 10 for j in grades)
    second = [j for j in grades if j["turn"] == 2]
    assert all("ASSISTANT: " in j["user_prompt"] and j["user_prompt"].count("USER: ") == 2 for j in second)
    math = [j for j in grades if j["question_id"] == "2"]
    assert {j["prompt"] for j in math} == {"grade-reference", "grade-second-turn-reference"}  # against its reference
    report = _cli(home, vllm_server, "bench", "report", "real", "--html", str(tmp_path / "r.html"), "--png", str(tmp_path / "r.png"))  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert (
        "## Grades (1-10), judge judge/base/mt-bench-v1" in report.stdout
        and "## How far the judge can be trusted" in report.stdout
    )
    assert (tmp_path / "r.png").stat().st_size > 10_000 and "data:image/png" in (tmp_path / "r.html").read_text()
    folder = tmp_path / "fc" / "data" / "mt_bench"
    assert _cli(home, vllm_server, "bench", "export", "real", "--dir", str(folder)).returncode == 0
    got = fastchat_layout(folder)
    assert set(got["answers"]) == {"zero-shot", "dialogue"} and len(got["single"]) == 12 and len(got["pair"]) == 6
    means = bench_report.build(store, "real").grades
    shown = shown_means(show_result(folder, "single", "base"), "First turn")
    for model, value in shown.items():
        assert value == pytest.approx(means.by[model][1].value)


def test_an_endpoint_that_goes_away_half_way_keeps_what_was_done_and_the_next_run_resumes(vllm_server, tmp_path):
    home = tmp_path / "home"
    vllm_server.share_key(home)
    gone = GoesAway(vllm_server.url, answered=3)
    try:
        done = _cli(home, vllm_server, "bench", "answer", str(QUESTIONS), "--name", "g", "--checkpoints", "zero-shot", "--base-url", gone.url, "--api-key", vllm_server.key, "--max-tokens", "16", "--concurrency", "1")  # fmt: skip
    finally:
        gone.close()
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "3 replies written" in _last_line(done) and "run the same command again to resume" in _last_line(done)
    store = Store(home / "limachat.db")
    kept = [r["id"] for a in bench.answers(store.bench_turns("g")).values() for r in a.replies if r]
    assert len(kept) == 3
    done = _cli(home, vllm_server, "bench", "answer", str(QUESTIONS), "--name", "g", "--checkpoints", "zero-shot", "--base-url", vllm_server.url, "--api-key", vllm_server.key, "--max-tokens", "16")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "5 replies written" in done.stdout and "1 of 4 answers were complete" in done.stdout
    after = bench.answers(store.bench_turns("g"))
    assert all(a.done(2) for a in after.values()) and set(kept) <= {r["id"] for a in after.values() for r in a.replies}
    # the judge's endpoint going away: the grades made stay, the next run makes only the rest
    gone = GoesAway(vllm_server.url, answered=2)
    try:
        judged = _cli(home, vllm_server, "bench", "judge", "g", "--mode", "single", "--base-url", gone.url, "--model", "base", "--api-key", vllm_server.key, "--max-tokens", "24", "--concurrency", "1")  # fmt: skip
    finally:
        gone.close()
    assert judged.returncode == 1 and "run the same command again to resume" in _last_line(judged)
    assert len(store.bench_judgments("g", "single")) == 2
    judged = _cli(home, vllm_server, "bench", "judge", "g", "--mode", "single", "--base-url", vllm_server.url, "--model", "base", "--api-key", vllm_server.key, "--max-tokens", "24")  # fmt: skip
    assert judged.returncode == 0, judged.stderr
    assert "2 already judged" in judged.stdout and len(store.bench_judgments("g", "single")) == 8
