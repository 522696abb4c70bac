"""Curation: the LLM judge, k-center selection and teacher revision, on the real vLLM server (the
local `base` as judge and teacher, as configured by default) and real conversations."""

from __future__ import annotations

import asyncio
import json

import pytest
from click.testing import CliRunner

from limachat import rounds
from limachat.cli import main
from limachat.curate import judge, revise, select
from limachat.demo import chat, collect, compare
from limachat.demo.answer import Deps
from limachat.dialogues import report as rep
from limachat.dialogues.export import Filters, chains, export
from limachat.dialogues.formats import import_file
from limachat.dialogues.store import Store


def drain(gen):
    async def go():
        items = [item async for item in gen]
        await asyncio.gather(*(asyncio.all_tasks() - {asyncio.current_task()}))
        return items

    return asyncio.run(go())


@pytest.fixture(scope="module")
def collected(real_server, tmp_path_factory):
    """Conversations a user had through the app: two chats of two exchanges and a compare session of two,
    rated by a person. Replies are capped at 96 tokens (their length is not what these tests check) and
    every request is seeded; the judge and the teacher run with their defaults. On the bundled model: a
    judge and a teacher must end their answers and keep to a format, which a random model never does."""
    home = tmp_path_factory.mktemp("curate")
    # seeded: the same draws each run; the home's own clients (judge, teacher, rounds) read the server's key there
    settings = real_server.settings(home, sampling={"max_tokens": 96, "extra": {"seed": 0}})
    cks = {n: real_server.checkpoint(n) for n in ("zero-shot", "dialogue")}
    deps = Deps(Store(home / "limachat.db"), cks, settings)
    for ck, (first, second) in (
        ("dialogue", ("How do I boil an egg?", "And how long for a soft one?")),
        ("zero-shot", ("Name three planets.", "Which one is the largest?")),
    ):
        state, _ = drain(chat.send(deps, chat.blank(), first, ck, "ana"))[-1]
        state, _ = drain(chat.send(deps, state, second, ck, "ana"))[-1]
        chat.rate(deps, state, 1, "Pass", "ana")
        chat.rate(deps, state, 3, "Fail", "ana")
    state = compare.blank()
    for text in ("Give me a tip for sleeping better.", "Another one?"):
        state = drain(compare.send(deps, state, text, "zero-shot", "dialogue", False, "ana"))[-1][0]
        compare.verdict(deps, state, "b", "ana")
    yield deps
    deps.store.close()


def test_judge_labels_scores_and_compares_and_a_second_run_adds_nothing(collected):
    store, settings = collected.store, collected.settings
    endpoint = settings.endpoint(settings.curate.judge)
    assert endpoint.model == "base" and endpoint.base_url == settings.local_base_url  # the default judge
    answers = {}
    for mode, expected in (("label", 8), ("score", 8), ("pairwise", 2)):
        s = judge.run(
            store,
            endpoint,
            mode,
            Filters(),
            concurrency=settings.curate.concurrency,
            max_tokens=settings.curate.judge_max_tokens,
        )
        assert (s.asked, s.parsed, s.skipped) == (expected, expected, 0), s.line()  # every answer parsed
        assert s.judge == f"judge/base/{mode}-v1" and store.kind_of(s.judge) == "judge"
        answers[mode] = store.judgments(s.judge)
        assert len(answers[mode]) == expected and all(j["error"] is None for j in answers[mode])
    judge_ratings = [(t, who) for t, who, _ in store.current_ratings() if who.startswith("judge/")]
    assert len(judge_ratings) == 8 and {who for _, who in judge_ratings} == {"judge/base/label-v1"}
    assert all(0 <= j["score"] <= 5 and j["explanation"] is not None for j in answers["score"])
    verdicts = [v for v in store.current_verdicts() if v["annotator"] == "judge/base/pairwise-v1"]
    assert len(verdicts) == 2 and {v["verdict"] for v in verdicts} <= {"a", "b", "tie", "inconsistent"}
    assert all(len(json.loads(j["raw"])) == 2 for j in answers["pairwise"])  # asked twice, the sides swapped
    # People's labels stay apart: the export takes humans by default, the report shows both side by side.
    assert store.lowest_labels(raters="humans") == {t: lab for t, who, lab in store.current_ratings() if who == "ana"}
    doc = rep.document(store)
    assert doc.judges is not None and doc.judges.checkpoints["dialogue"].rated == 2 + 2
    assert doc.humans.checkpoints["dialogue"].rated == 2  # ana rated its 2 chat replies, not the compare ones
    (agree,) = [a for a in doc.agreements if a.judge == "judge/base/label-v1"]
    assert agree.turns == 4 and sum(agree.confusion.values()) == 4
    text = rep.render(doc)
    assert "## Rated by LLM judges" in text and "| judge/base/label-v1 | 4 |" in text
    assert any(r["raters"] == "judges" and r["verdicts"] == 2 for r in doc.rates)
    # a second run asks nothing and adds nothing
    before = store.counts(), len(store.judgments())
    for mode in ("label", "score", "pairwise"):
        s = judge.run(store, endpoint, mode, Filters(), concurrency=8, max_tokens=settings.curate.judge_max_tokens)
        assert (s.asked, s.skipped) == (0, 8 if mode != "pairwise" else 2)
    assert (store.counts(), len(store.judgments())) == before


def test_judge_from_the_command_line_with_another_model_and_a_limit(collected, real_server, monkeypatch):
    monkeypatch.setenv("LIMACHAT_SERVER__PORT", str(real_server.port))
    monkeypatch.setenv("LIMACHAT_SERVER__BASE", real_server.base)
    result = CliRunner().invoke(
        main,
        [
            "--home",
            str(collected.settings.home),
            "judge",
            "label",
            "--checkpoint",
            "dialogue",
            "--model",
            "dialogue",
            "--limit",
            "1",
            "--prompt-version",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "judge/dialogue/label-v1: judged 1 (1 parsed, " in result.output  # another judge: its own annotator
    assert collected.store.kind_of("judge/dialogue/label-v1") == "judge"


def test_revise_turns_stores_rubrics_and_teacher_edits_and_exports_them(collected, tmp_path):
    store, settings = collected.store, collected.settings
    teacher = settings.endpoint(settings.curate.teacher)
    _, params = settings.sampling_for(None)
    s = revise.revise(
        store,
        teacher,
        Filters(),
        labels=("fail", "pass"),
        raters="humans",
        limit=3,
        params={**params, "max_tokens": settings.curate.teacher_max_tokens},
        max_tokens=settings.curate.judge_max_tokens,
    )
    # a 135M teacher may give a reply back as it was: that is counted, not stored for review
    assert s.revised + s.unchanged + s.failed == 3 and s.revised >= 1, s.line()
    assert s.teacher == "teacher/base/revise-v1" and store.kind_of(s.teacher) == "teacher"
    rubrics, categories = store.rubrics(), store.categories()
    assert rubrics and set(categories.values()) <= set(rubrics)  # every filed instruction has a rubric
    edits = store.teacher_edits()
    assert len(edits) == s.revised and all(e["rubric_id"] in {r["id"] for r in rubrics.values()} for e in edits)
    assert all(e["content"].strip() and e["content"] != e["original"] for e in edits)
    # A person's gold edits are the default; a teacher's revision is gold only when asked for.
    revised = edits[0]["turn_id"]
    assert (
        store.gold_edits(source="humans") == {} and store.gold_edits(source="teachers")[revised] == edits[0]["content"]
    )
    out = tmp_path / "revised.jsonl"
    export(store, out, "messages", Filters(prefer_gold=True, gold_from="teachers", raters="all"))
    texts = [m["content"] for line in out.read_text().splitlines() for m in json.loads(line)["messages"]]
    assert edits[0]["content"] in texts
    # A person accepts one (it becomes their own gold edit) or rejects it (no longer gold).
    assert "Accepted" in collect.review(collected, edits[0]["id"], "ana", True)
    assert store.gold_edits(source="humans")[revised] == edits[0]["content"]
    assert edits[0]["id"] not in [e for _, e in collect.pending_revisions(collected)]
    # a second run skips what this teacher revised already
    again = revise.revise(
        store,
        teacher,
        Filters(),
        labels=("fail", "pass"),
        raters="humans",
        limit=2,
        params={**params, "max_tokens": 2},
        max_tokens=settings.curate.judge_max_tokens,
    )
    assert again.skipped >= s.revised
    # at 2 tokens a revision is cut off: it is asked for once more, with the next seed, and cut off again,
    # so the turn fails with that reason and nothing is stored for it
    assert again.asked_again >= 1, again.line()
    assert f"{again.asked_again} asked again after hitting the token limit" in again.line()
    assert again.failed >= 1 and "the revision hit the token limit twice" in again.errors, again.line()
    assert len(store.teacher_edits()) == s.revised + again.revised


def test_collect_tab_runs_a_judge_job_whose_progress_is_data(collected):
    job = collect.start_judge(collected, "score", collect.filters(checkpoint="zero-shot"), 0)
    with pytest.raises(ValueError, match="still running"):
        collect.start_judge(collected, "label", collect.filters(), 0)
    assert job.proc.wait(timeout=600) == 0, job.log.read_text()
    p = job.progress()
    assert (p["state"], p["stage"], p["unit"]) == ("done", "judging (score)", "turn") and p["done"] == p["total"]
    assert "**judge" in collect.job_status(collected) and "done" in collect.job_status(collected)


def test_select_on_the_bundled_chains_beats_random_and_embeds_each_chain_once(tmp_path):
    from importlib.resources import files

    store = Store(tmp_path / "s.db")
    import_file(store, files("limachat.dialogues.data") / "train.jsonl", "lima")
    first = select.select(store, Filters(), name="twenty", size=20)
    assert first.chains == 68 and first.size == 20 and first.embedded == 68
    # k-center's coverage (largest distance to the nearest chosen chain) beats random samples of the same size
    assert first.coverage < first.random_mean - 2 * first.random_sd, first.line()
    again = select.select(store, Filters(), name="twenty-per-cluster", size=20, per_cluster=True)
    assert again.embedded == 0 and again.size == 20  # the cache held every chain
    saved = {s["name"]: s for s in store.selections()}
    assert saved["twenty"]["chains"] == 20 and saved["twenty"]["coverage"]["kcenter"] == pytest.approx(first.coverage)
    picked = list(chains(store, Filters(selection="twenty")))
    assert len(picked) == 20 and {c.leaf for c in picked} == set(store.selection("twenty"))
    with pytest.raises(ValueError, match="exists"):
        select.select(store, Filters(), name="twenty", size=5)


def test_revise_rounds_train_serve_replay_and_judge_each_round(collected, real_server):
    """One CITING round end to end: revise, train `citing-r1` on the bundled set plus the revised chains
    (two optimizer steps: how long it trains is not what this checks), load it into the running server, ask it
    the revised chains' questions again, and have the judge label its replies for the report."""
    import httpx
    from conftest import models

    store, settings = collected.store, collected.settings
    teacher = settings.endpoint(settings.curate.teacher)
    try:
        lines = list(
            rounds.rounds(
                store,
                settings,
                teacher,
                Filters(),
                rounds=1,
                name="citing",
                epochs=1,
                max_steps=2,
                labels=("fail", "pass"),
                raters="all",
                limit=1,
                concurrency=8,
            )
        )
        assert lines[0].startswith("round 1: teacher/base/revise-v1:") and "turns revised" in lines[0], lines
        assert "citing-r1 trained on" in lines[1] and "served" in lines[1], lines
        assert "citing-r1" in models(real_server.url, real_server.headers)
        trained = json.loads((settings.layout.checkpoint("citing-r1") / "train_config.json").read_text())
        assert (trained["epochs"], trained["max_steps"]) == (1, 2), "the round trains as it was told"
        replies = [
            t
            for s in store.sessions()
            if s["prompt_set"] == "citing-r1"
            for t in store.turns(s["id"])
            if t["role"] == "assistant"
        ]
        assert replies and all(t["checkpoint"] == "citing-r1" and t["status"] == "ok" and t["content"] for t in replies)
        preset, wanted = settings.sampling_for(None)
        assert {t["preset"] for t in replies} == {preset}, "a replayed reply records its preset, as the app's do"
        assert all(t["params"]["temperature"] == wanted["temperature"] for t in replies)
        judged = judge.targets(store, "label", "judge/base/label-v1", Filters(checkpoint="citing-r1"), None)
        assert judged == ([], len(replies)), "the judge labelled every reply of the round"
        assert rep.document(store).judges.checkpoints["citing-r1"].rated == len(replies)
    finally:
        body = {"lora_name": "citing-r1"}
        httpx.post(
            real_server.url + "/unload_lora_adapter",
            headers=real_server.headers,
            json=body,
            timeout=60,
        )


def test_a_judge_without_structured_outputs_is_parsed_and_a_failure_is_kept_and_asked_again(collected):
    """An endpoint that takes no JSON schema (structured_outputs = false): the answer is parsed from the
    text; one that does not parse is stored with its error and raw text, and the next run asks again."""
    store, settings = collected.store, collected.settings
    endpoint = settings.endpoint(settings.curate.judge).model_copy(
        update={"model": "zero-shot", "structured_outputs": False}
    )
    first = judge.run(
        store,
        endpoint,
        "label",
        Filters(checkpoint="dialogue"),
        concurrency=8,
        max_tokens=settings.curate.judge_max_tokens,
    )
    answers = store.judgments(first.judge)
    assert first.judge == "judge/zero-shot/label-v1" and first.asked == len(answers) > 0
    failed = [j for j in answers if j["error"] is not None]
    assert len(failed) == first.asked - first.parsed
    assert all(j["result"] is None and j["raw"] is not None for j in failed)
    assert all(j["result"] in ("fail", "pass", "excellent") for j in answers if j["error"] is None)
    again = judge.run(
        store,
        endpoint,
        "label",
        Filters(checkpoint="dialogue"),
        concurrency=8,
        max_tokens=settings.curate.judge_max_tokens,
    )
    assert (again.asked, again.skipped) == (len(failed), first.parsed)  # only the unparsed are asked again
