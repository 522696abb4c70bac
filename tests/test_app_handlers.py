"""The app's handlers without a browser: a real SQLite file and the real vLLM server."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import time

import httpx
import pytest
from conftest import free_port, models

from limachat.demo import chat, collect, compare, rating
from limachat.demo.answer import Deps
from limachat.demo.history import inert
from limachat.demo.users import AuthFileError, Logins, add_user, plain, read_users
from limachat.dialogues.store import Store
from limachat.serve.checkpoints import Checkpoint
from limachat.serve.fluency import fluency


@pytest.fixture
def deps(vllm_server, tmp_path):
    # the preset the bundled model gets by default, named (the tiny model is not the bundled one)
    settings = vllm_server.settings(tmp_path, sampling={"preset": "focused", "max_tokens": 24, "temperature": 0.0})
    cks = {n: vllm_server.checkpoint(n) for n in ["zero-shot", "dialogue"]}
    d = Deps(Store(tmp_path / "app.db"), cks, settings, fluency_url=vllm_server.url)
    yield d
    d.store.close()


def drain(gen):
    async def go():
        items = [item async for item in gen]
        await asyncio.gather(*(asyncio.all_tasks() - {asyncio.current_task()}))  # fluency scoring, in the background
        return items

    return asyncio.run(go())


def test_chat_two_turns_stream_and_are_stored(deps, vllm_server):
    outs = drain(chat.send(deps, chat.blank(), "Complete this sentence: The capital of France is", "dialogue", "ana"))
    assert len(outs) >= 3, "the reply should reach the page in several pieces"
    first_state, first_view = outs[0]
    assert first_view.history[0] == {"role": "user", "content": "Complete this sentence: The capital of France is"}
    state, v = outs[-1]
    assert [m["role"] for m in v.history] == ["user", "assistant"] and v.feedback == [None]
    assert v.history[1]["content"] == deps.store.turns(state["session"])[1]["content"].strip()  # shown as stored
    state, v = drain(chat.send(deps, state, "And of Italy?", "dialogue", "ana"))[-1]
    assert len(v.history) == 4 and len(state["ids"]) == 4
    turns = deps.store.turns(state["session"])
    assert [t["role"] for t in turns] == ["user", "assistant"] * 2
    reply = turns[3]
    assert reply["status"] == "ok" and reply["checkpoint"] == "dialogue" and reply["completion_tokens"] > 0
    assert reply["ttft"] > 0
    # what was sent is what is stored: the preset under the overrides
    assert reply["preset"] == "focused" and reply["omitted"] is None
    assert reply["params"] == {
        "max_tokens": 24,
        "temperature": 0.0,
        "top_p": 0.9,
        "generated_repetition_penalty": 1.1,
        "penalty_scope": "conversation",
    }
    # scored under the base once the reply is done, as the fluency score of that reply in its conversation
    scored = asyncio.run(fluency(vllm_server.url, "base", deps.store.messages(reply["id"])[:-1], reply["content"], headers=vllm_server.headers))  # fmt: skip
    assert reply["fluency"] == pytest.approx(scored, abs=1e-3)
    # the second request carried the first exchange
    assert [m["content"] for m in deps.store.messages(turns[2]["id"])][:2] == [turns[0]["content"], turns[1]["content"]]
    assert deps.store.session(state["session"])["mode"] == "chat"


def test_an_endpoint_that_cannot_apply_limas_penalty_records_it_was_not_sent(deps, vllm_server):
    deps.add_checkpoint(
        Checkpoint(
            name="llama-cpp-box",
            model="dialogue",
            base_url=vllm_server.url,
            api_key=vllm_server.key,
            omit_params=["generated_repetition_penalty"],
        )
    )
    state, v = drain(chat.send(deps, chat.blank(), "Say hello.", "llama-cpp-box", "ana"))[-1]
    reply = deps.store.turn(state["ids"][1])
    # without the penalty its scope means nothing: neither is sent, both are recorded as not sent
    assert reply["status"] == "ok" and reply["omitted"] == ["generated_repetition_penalty", "penalty_scope"]
    assert not {"generated_repetition_penalty", "penalty_scope"} & set(reply["params"]) and reply["preset"] == "focused"


def test_empty_input_does_nothing(deps):
    ((state, v),) = drain(chat.send(deps, chat.blank(), "   ", "dialogue", "ana"))
    assert state["session"] is None and v.history == [] and deps.store.sessions() == []


def test_ratings_need_a_name_and_stay_per_annotator(deps):
    state, _ = drain(chat.send(deps, chat.blank(), "Name a colour.", "zero-shot", None))[-1]
    with pytest.raises(ValueError, match="name"):
        chat.rate(deps, state, 1, "Pass", None)
    assert chat.rate(deps, state, 1, "Pass", "ana").feedback == ["Pass"]
    assert chat.rate(deps, state, 1, "Excellent", "ana").feedback == ["Excellent"]
    assert chat.rate(deps, state, 1, "Fail", "bo").feedback == ["Fail"]
    assert chat.current(deps, state, "ana").feedback == ["Excellent"], "bo's rating must not overwrite ana's"
    reply = state["ids"][1]
    assert {r["annotator"]: r["label"] for r in deps.store.ratings(reply)} == {"ana": "excellent", "bo": "fail"}
    assert len(deps.store.ratings(reply, history=True)) == 3
    # resuming the session shows the annotator's ratings again
    resumed, v = chat.resume(deps, state["session"], "ana")
    assert resumed["ids"] == state["ids"] and v.feedback == ["Excellent"]
    assert any(sid == state["session"] for _, sid in chat.sessions(deps))


def test_the_page_load_restores_a_remembered_name_and_never_wipes_a_typed_one(tmp_path):
    """The page's load event answers after the page is shown: a name typed meanwhile on a first visit (nothing
    remembered) must stay, so the event leaves the box alone; a remembered name, or a login, fills it."""
    import gradio as gr

    from limachat.demo.app import build_app
    from limachat.settings import Settings

    settings = Settings(home=tmp_path)
    dead = Checkpoint(name="dialogue", model="dialogue", base_url=f"http://127.0.0.1:{free_port()}/v1")
    for auth in (False, True):
        store = Store(tmp_path / f"app-{auth}.db")
        app = build_app(store, [dead], settings, auth=auth)
        (restore,) = [f.fn for f in app.fns.values() if f.name == "_restore"]
        assert restore("", gr.Request()) == gr.skip()  # no update: what was typed stays
        assert restore("ana", gr.Request()) == "ana"
        assert restore("", gr.Request(username="bo")) == ("bo" if auth else gr.skip())
        store.close()


def test_regenerate_keeps_the_old_reply_and_edit_branches(deps):
    state, v = drain(chat.send(deps, chat.blank(), "Say hello.", "zero-shot", "ana"))[-1]
    old_reply = state["ids"][1]
    deps.settings.sampling.temperature = 1.0
    state, v = drain(chat.regenerate(deps, state, 1, "dialogue", "ana"))[-1]
    assert state["ids"][1] != old_reply and deps.store.turn(old_reply)["status"] == "ok"
    siblings = deps.store.children(state["ids"][0])
    assert [t["id"] for t in siblings] == [old_reply, state["ids"][1]]
    assert deps.store.turn(state["ids"][1])["checkpoint"] == "dialogue"
    # edit the user message: a new branch from the same parent, the old one untouched
    first_user = state["ids"][0]
    state, v = drain(chat.edit(deps, state, 0, "Say goodbye.", "dialogue", "ana"))[-1]
    assert state["ids"][0] != first_user and v.history[0]["content"] == "Say goodbye."
    assert len(deps.store.children(None, state["session"])) == 2
    # edit the reply: a gold correction beside the original
    state, v = drain(chat.edit(deps, state, 1, "Goodbye, and take care!", "dialogue", "ana"))[-1]
    original = deps.store.turn(state["ids"][1])["content"]
    shown = v.history[1]["content"]
    assert shown.startswith("Goodbye, and take care!\n\n") and "edited by ana" in shown, (
        "an edited reply says so, and who"
    )
    assert f"<summary>✏️ edited by ana: show the original reply</summary>\n\n{inert(original)}" in shown, (
        "the original, one click away"
    )
    assert deps.store.gold(state["ids"][1]) == "Goodbye, and take care!" and original
    state, v = drain(chat.edit(deps, state, 1, shown.replace("take care", "be well"), "dialogue", "ana"))[-1]
    assert deps.store.gold(state["ids"][1]) == "Goodbye, and be well!", "editing again stores the text, not the note"
    with pytest.raises(ValueError, match="name"):
        drain(chat.edit(deps, state, 1, "Another correction", "dialogue", None))


def test_stop_keeps_the_partial_reply(deps):
    deps.settings.sampling.max_tokens = 400

    async def go():
        outs = []
        task = None

        async def consume():
            async for item in chat.send(
                deps, chat.blank(), "Write a long story about a lighthouse.", "zero-shot", "ana"
            ):
                outs.append(item)
                if len(outs) == 4:
                    task.cancel()

        task = asyncio.ensure_future(consume())
        with pytest.raises(asyncio.CancelledError):
            await task
        return outs

    outs = asyncio.run(go())
    state, _ = outs[-1]
    reply = deps.store.turn(state["ids"][-1])
    assert reply["status"] == "stopped" and reply["content"], "the text streamed before the stop is kept"
    assert "(stopped)" in chat.current(deps, state, "ana").history[-1]["content"]


def test_unreachable_endpoint_keeps_the_question_and_offers_retry(deps):
    deps.add_checkpoint(Checkpoint(name="offline", model="dialogue", base_url=f"http://127.0.0.1:{free_port()}/v1"))
    state, v = drain(chat.send(deps, chat.blank(), "Are you there?", "offline", "ana"))[-1]
    user, reply = (deps.store.turn(i) for i in state["ids"])
    assert user["content"] == "Are you there?" and reply["status"] == "error"
    assert reply["error"] == "its server cannot be reached (stopped, starting, or a wrong address)"
    assert "127.0.0.1" in reply["error_detail"] and "offline" in reply["error_detail"]
    shown = v.history[1]["content"]
    assert shown.startswith("⚠️ **offline: its server cannot be reached") and "retry" in shown
    assert "127.0.0.1" in shown, "outside blind sessions the page gives the detail"
    state, v = drain(chat.regenerate(deps, state, 1, "dialogue", "ana"))[-1]
    assert deps.store.turn(state["ids"][1])["status"] == "ok" and state["ids"][0] == user["id"]


def test_context_overflow_drops_oldest_turns_with_a_notice(deps):
    sid = deps.store.start_session("chat")
    long_text = "The lighthouse keeper counted the waves again. " * 260  # ~2,300 tokens: more than the window
    u = deps.store.add_user_turn(sid, long_text)
    a = deps.store.begin_assistant_turn(sid, u, checkpoint="dialogue")
    deps.store.finish_assistant_turn(a, "That is a lot of waves.")
    state, v = drain(chat.send(deps, {"session": sid, "ids": [u, a]}, "What is 2 + 2?", "dialogue", "ana"))[-1]
    reply = deps.store.turn(state["ids"][-1])
    assert reply["status"] == "ok" and reply["params"]["dropped_exchanges"] == 1
    assert "oldest exchange" in v.history[-1]["content"]
    # a single message beyond the window: a clear message, the question kept
    state, v = drain(chat.send(deps, chat.blank(), long_text, "dialogue", "ana"))[-1]
    reply = deps.store.turn(state["ids"][-1])
    assert reply["status"] == "error" and "this message is too long for the context window" in reply["error"]
    assert v.history[-1]["content"].startswith("⚠️ **dialogue: this message is too long")


def test_an_ad_hoc_comparison_with_a_shared_history_continues_from_the_preferred_reply(deps):
    """The Compare tab's History: shared, on the real server: the second question waits for a verdict, then
    both sides are asked it after the reply the verdict preferred, and the page lists both verdicts."""
    state = {**compare.blank(), "history": "shared"}
    state = drain(compare.send(deps, state, "Name a fruit.", "zero-shot", "dialogue", False, "ana"))[-1][0]
    assert deps.store.session(state["session"])["meta"]["history"] == "shared"
    assert compare.study_line(deps, state, "ana").startswith("History: shared history: both sides continue")
    with pytest.raises(ValueError, match="give your verdict on this exchange first"):
        drain(compare.send(deps, state, "Why that one?", "zero-shot", "dialogue", False, "ana"))
    assert len(deps.store.turns(state["session"])) == 4, "a refused question stores nothing"
    preferred = state["b"][-1]
    compare.verdict(deps, state, "b", "ana")
    state, va, vb = drain(compare.send(deps, state, "Why that one?", "zero-shot", "dialogue", False, "ana"))[-1]
    for lane in ("a", "b"):
        question = deps.store.turn(state[lane][-2])
        assert question["lane"] == lane and question["parent_id"] == preferred
        sent = deps.store.messages(question["id"])
        assert [m["content"] for m in sent] == ["Name a fruit.", deps.store.turn(preferred)["content"], "Why that one?"]
    assert va.history[1]["content"] == vb.history[1]["content"], "both sides show the history they continued from"
    compare.verdict(deps, state, "tie", "ana")
    assert compare.verdicts_line(deps, state, "ana") == (
        "Your verdicts: turn 1: dialogue better; turn 2: a tie."
    )  # fmt: skip


def test_blind_compare_from_a_prompt_both_sides_own_history(deps):
    name, prompts = compare.prompt_set(None)
    assert name == "bundled" and len(prompts) == 10
    state, text = compare.pick_prompt(compare.blank(), name, prompts[0])
    outs = drain(compare.send(deps, state, text, "zero-shot", "dialogue", True, "ana"))
    state, va, vb = outs[-1]
    assert state["blind"] and compare.side_names(state) == {"a": "A", "b": "B"}
    assert sorted(state["names"].values()) == ["dialogue", "zero-shot"]
    session = deps.store.session(state["session"])
    assert session["mode"] == "blind" and session["prompt_set"] == "bundled" and session["prompt"] == prompts[0]["id"]
    assert va.history[0]["content"] == vb.history[0]["content"] == inert(prompts[0]["prompt"])
    state, va, vb = drain(compare.send(deps, state, "Make it shorter.", "zero-shot", "dialogue", True, "ana"))[-1]
    for lane in ("a", "b"):
        turns = [deps.store.turn(i) for i in state[lane]]
        assert all(t["lane"] == lane for t in turns) and turns[1]["checkpoint"] == state["names"][lane]
        sent = deps.store.messages(turns[2]["id"])
        assert sent[1]["content"] == turns[1]["content"], "each side sees its own earlier answer"
    assert compare.rate(deps, state, "a", 3, "Pass", "ana").feedback == [None, "Pass"]
    assert compare.rate(deps, state, "b", 1, "Fail", "ana").feedback == ["Fail", None]
    assert compare.verdict(deps, state, "b", "ana") == "Your verdicts: turn 2: B better."
    # Resumed (a new page): both lanes, the ratings, the verdicts, and still blind.
    again, ra, rb = compare.resume(deps, state["session"], "ana")
    assert (again["a"], again["b"], again["names"]) == (state["a"], state["b"], state["names"])
    assert (ra.feedback, rb.feedback) == ([None, "Pass"], ["Fail", None]) and compare.side_names(again) == {
        "a": "A",
        "b": "B",
    }
    assert compare.verdicts_line(deps, again, "ana") == "Your verdicts: turn 2: B better."
    (listed,) = compare.sessions(deps)
    assert listed[1] == state["session"] and "A vs B (blind)" in listed[0]
    assert not any(n in listed[0] for n in ("zero-shot", "dialogue")), "the resume list gives nothing away"
    (v,) = deps.store.verdicts(state["session"])
    assert v["turn_a"] == state["a"][-1] and v["turn_b"] == state["b"][-1] and v["checkpoint_b"] == state["names"]["b"]
    state, message = compare.close(deps, state)
    assert f"A was {state['names']['a']}" in message and compare.side_names(state) == state["names"]
    with pytest.raises(ValueError, match="closed"):
        drain(compare.send(deps, state, "One more?", "zero-shot", "dialogue", True, "ana"))
    headers, rows = compare.coverage(deps, "bundled", prompts)
    assert headers == ["id", "prompt", "zero-shot", "dialogue"]
    assert rows[0][2:] == [1, 1] and all(r[2:] == [0, 0] for r in rows[1:])


def test_a_study_walk_by_the_rating_panel_resumes_where_it_stopped(deps):
    from limachat.dialogues import study

    study.create(
        deps.store, "pilot", ["zero-shot", "dialogue"], conversations=1, turns=2, blind=True, annotators=["ana"]
    )
    with pytest.raises(ValueError, match="not an annotator"):
        compare.study_next(deps, "pilot", "bo")
    state, prompt = compare.study_next(deps, "pilot", "ana")
    (slot,) = study.plan(deps.store.study("pilot"), "ana")
    assert prompt == slot.prompt and state["names"] == slot.sides and state["blind"]
    state, va, vb = drain(compare.send(deps, state, prompt, None, None, True, "ana"))[-1]
    session = deps.store.session(state["session"])
    assert (session["study"], session["slot"], session["mode"]) == ("pilot", slot.index, "blind")
    for lane, label in (("a", "Pass"), ("b", "Excellent")):  # what keys 2 and 3 press: the focused (newest) reply
        v = compare.side(deps, state, lane, "ana")
        assert rating.caption(v, 0) == "reply 1 of 1 · not rated yet"
        v = compare.rate(deps, state, lane, rating.focused(v, 0), label, "ana")
        assert rating.label(v, 0) == label.lower()
    assert "turn 2 of 2" in compare.study_line(deps, state, "ana")
    with pytest.raises(ValueError, match="has not reached its 2 turns"):
        compare.close(deps, state)
    state, va, vb = drain(compare.send(deps, state, "Tell me more.", None, None, True, "ana"))[-1]
    assert "has reached its 2 turns" in compare.study_line(deps, state, "ana")
    assert rating.move(va, 0, -1) == 1 and rating.move(va, 1, -1) == 1 and rating.move(va, 1, 1) == 0
    again, prompt = compare.study_next(deps, "pilot", "ana")  # two replies unrated: the same conversation comes back
    assert prompt is None and again["session"] == state["session"] and again["a"] == state["a"] and again["blind"]
    for lane in ("a", "b"):
        v = compare.side(deps, again, lane, "ana")
        compare.rate(deps, again, lane, rating.focused(v, 0), "Fail", "ana")
    with pytest.raises(ValueError, match="your walk is done"):
        compare.study_next(deps, "pilot", "ana")
    board = {r["checkpoint"]: r for r in study.progress(deps.store, deps.store.study("pilot"))}
    assert board["dialogue"]["conversations done"] == "1 / 1" and board["dialogue"]["replies rated"] == "2 / 2"


def test_compare_side_that_fails_keeps_its_question_and_retries(deps, vllm_server):
    deps.add_checkpoint(Checkpoint(name="gpu-box", model="dialogue", base_url=f"http://127.0.0.1:{free_port()}/v1"))
    state, va, vb = drain(compare.send(deps, compare.blank(), "Hello there!", "zero-shot", "gpu-box", False, "ana"))[-1]
    ok, failed = (deps.store.turn(state[lane][-1]) for lane in ("a", "b"))
    assert ok["status"] == "ok" and failed["status"] == "error" and "⚠️" in vb.history[-1]["content"]
    # the endpoint comes back: retry that side only
    deps.add_checkpoint(vllm_server.checkpoint("gpu-box", "dialogue"))
    state, va2, vb2 = drain(compare.retry(deps, state, "b", "ana"))[-1]
    assert deps.store.turn(state["b"][-1])["status"] == "ok" and state["b"][0] == failed["parent_id"]
    assert state["a"][-1] == ok["id"] and va2.history == va.history
    assert [t["status"] for t in deps.store.children(failed["parent_id"])] == ["error", "ok"]


def test_blind_assignment_is_drawn_per_session_from_the_seeded_generator(deps):
    import random

    def draws(seed):
        deps.rng = random.Random(seed)
        return [
            asyncio.run(compare._start(deps, compare.blank(), "hi", "zero-shot", "dialogue", True, "ana"))["names"]["a"]
            for _ in range(12)
        ]

    assert draws(7) == draws(7), "a seeded draw repeats"
    assert set(draws(7)) == {"zero-shot", "dialogue"}, "both sides come up"
    with pytest.raises(ValueError, match="two different"):
        asyncio.run(compare._start(deps, compare.blank(), "hi", "dialogue", "dialogue", False, "ana"))


def test_blind_errors_name_the_side_from_fields_and_hide_the_detail(deps):
    import random

    deps.rng = random.Random(1)
    state = asyncio.run(compare._start(deps, compare.blank(), "q", "zero-shot", "dialogue", True, "ana"))
    sid, names = state["session"], state["names"]
    for lane in ("a", "b"):
        u = deps.store.add_user_turn(sid, "Is a dialogue better than a monologue?", lane=lane)
        r = deps.store.begin_assistant_turn(sid, u, checkpoint=names[lane], lane=lane)
        deps.store.finish_assistant_turn(
            r,
            "Two voices talk.",
            status="error",
            error="the reply broke off",
            error_detail=f"{names[lane]}: stream from model-{names[lane]} at http://10.0.0.9/v1 broke",
        )
        state[lane] = [u, r]
    for lane, v in zip("ab", compare.views(deps, state, "ana")):
        assert v.history[0]["content"] == "Is a dialogue better than a monologue?"
        text = v.history[1]["content"]
        assert text.startswith("Two voices talk.") and f"**{lane.upper()}: the reply broke off.**" in text
        assert not any(secret in text for secret in ("zero-shot", "dialogue", "model-", "10.0.0.9"))
    state, _ = compare.close(deps, state)
    revealed = compare.views(deps, state, "ana")[0].history[1]["content"]
    assert f"**{names['a']}: the reply broke off.**" in revealed and "10.0.0.9" in revealed


def test_user_prompt_set_file(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("First question\n\nSecond question\n")
    assert compare.prompt_set(path) == (
        "mine.txt",
        [{"id": "p01", "prompt": "First question"}, {"id": "p02", "prompt": "Second question"}],
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        compare.prompt_set(bad)


def test_collect_counts_exports_and_trains_in_the_background(deps):
    state, _ = drain(chat.send(deps, chat.blank(), "Name a fruit.", "dialogue", "ana"))[-1]
    state, _ = drain(chat.send(deps, state, "Another one?", "dialogue", "ana"))[-1]
    chat.rate(deps, state, 1, "Excellent", "ana")
    assert collect.count(deps, collect.filters("pass")).startswith("**0** chains, **0** assistant turns pass these")
    chat.rate(deps, state, 3, "Pass", "ana")
    assert collect.count(deps, collect.filters("pass")).startswith("**1** chains, **2** assistant turns pass these")
    assert collect.count(deps, collect.filters("excellent", cut_at_first_fail=True)).startswith("**0**")
    path, message = collect.export_file(
        deps, collect.filters("pass", checkpoint="dialogue", annotator="ana"), "messages"
    )
    (record,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert [m["role"] for m in record["messages"]] == ["user", "assistant"] * 2 and "1 chains" in message
    with pytest.raises(ValueError, match="No chains"):
        collect.start_training(deps, collect.filters("pass", checkpoint="zero-shot"))
    # a real (short) training run in the background, then served by the running vLLM and chatted with
    name = "dialogue-r2"
    job = collect.start_training(
        deps, collect.filters("pass"), name=name, extra=("--epochs", "1", "--max-length", "96")
    )
    with pytest.raises(ValueError, match="still running"):
        collect.start_training(deps, collect.filters("pass"))
    with pytest.raises(ValueError, match="nothing to serve yet"):
        collect.serve_trained(deps, job)
    assert job.proc.wait(timeout=900) == 0, job.log.read_text()
    p = job.progress()  # the job's own record (data the trainer writes), not its log
    assert (p["state"], p["stage"], p["unit"]) == ("done", "training dialogue", "step") and p["done"] == p["total"] > 0
    assert p["postfix"]["loss"] > 0 and "**train dialogue-r2**: done" in collect.job_status(deps)
    assert "examples: 62 single-turn, 7 multi-turn chains" in job.log.read_text(), "6 bundled chains + the rated one"
    assert (deps.settings.home / "checkpoints" / name / "adapter_model.safetensors").is_file()
    try:
        assert "Serving **dialogue-r2**" in collect.serve_trained(deps, job)
        assert name in models(deps.settings.local_base_url, deps.settings.local_headers) and name in deps.names
        state, v = drain(chat.send(deps, chat.blank(), "What is the capital of France?", name, "ana"))[-1]
        reply = deps.store.turn(state["ids"][1])
        assert reply["status"] == "ok" and reply["checkpoint"] == name and reply["content"]
    finally:
        httpx.post(
            deps.settings.local_base_url + "/unload_lora_adapter",
            json={"lora_name": name},
            headers=deps.settings.local_headers,
            timeout=60,
        )
    assert name not in models(deps.settings.local_base_url, deps.settings.local_headers)


def test_report_tab(deps):
    png, text = collect.report(deps)
    assert png is None and "No rated turns" in text
    state, _ = drain(chat.send(deps, chat.blank(), "Hi!", "dialogue", "ana"))[-1]
    chat.rate(deps, state, 1, "Excellent", "ana")
    png, text = collect.report(deps)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "dialogue" in text and "100.0%" in text
    state, _ = drain(chat.send(deps, state, "And what is the capital of Spain?", "dialogue", "ana"))[-1]
    _, text = collect.report(deps)  # the follow-up's repeat share is in the dialogue row's repeat rate
    assert "| repeats |" in text and re.search(r"\| dialogue \|.*\| \d+\.\d% \([01]/1\) \|", text), text


def test_html_in_messages_is_shown_not_run():
    text = 'Look: <script>alert(1)</script> <img src=x onerror="alert(2)"> & `<b>code</b>`'
    shown = inert(text)
    assert "<script" not in shown and "<img" not in shown and "&lt;script>" in shown and "&lt;img" in shown
    assert "`<b>code</b>`" in shown, "code keeps its text: Markdown shows it literally"


def test_auth_file_holds_argon2_hashes_and_plain_lines_still_work(tmp_path):
    path = tmp_path / "users.txt"
    assert add_user(path, "ana", "s3cret") is False and add_user(path, "bo", "pw:with:colons") is False
    assert add_user(path, "ana", "n3w") is True  # a new password replaces the line
    users = read_users(path)
    assert set(users) == {"ana", "bo"} and all(h.startswith("$argon2id$") for h in users.values())
    assert "s3cret" not in path.read_text() and plain(users) == []
    path.write_text(path.read_text() + "# an old line\ncy:plain-pw\n")
    users = read_users(path)
    assert plain(users) == ["cy"]
    logins = Logins(users)
    check = logins.check
    assert inspect.iscoroutinefunction(check), "Gradio awaits only what inspect calls a coroutine function"

    async def tries():
        return [
            await check("ana", "n3w"),
            await check("bo", "pw:with:colons"),
            await check("cy", "plain-pw"),
            await check("ana", "s3cret"),
            await check("nobody", "x"),
        ]

    assert asyncio.run(tries()) == [True, True, True, False, False]
    assert logins.failures == {"ana": 1, "nobody": 1}
    path.write_text("ana:s3cret\nbo\n")
    with pytest.raises(AuthFileError, match="users.txt:2: expected name:hash"):
        read_users(path)


def test_the_highlighted_button_is_the_focused_replys_label_whatever_the_key_order(monkeypatch):
    """The panel builds its buttons from `rating.KEYS` and `updates` must highlight in that same order."""
    import gradio as gr

    from limachat.demo import panel as panel_mod
    from limachat.demo.history import View

    monkeypatch.setattr(rating, "KEYS", {"1": "excellent", "2": "fail", "3": "pass"})
    with gr.Blocks():
        p = panel_mod.panel("chat")
    v = View(
        history=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        feedback=["Fail"],
        ids=["u", "a"],
    )
    variants = dict(zip(p.buttons, (u["variant"] for u in panel_mod.updates(v, 0)[1:])))
    assert variants == {"excellent": "secondary", "fail": "primary", "pass": "secondary"}


def test_a_streaming_reply_reaches_the_page_at_most_ten_times_a_second():
    """The page gets the first update at once, then the newest one per 100 ms, and always the last: at a
    GPU's pace one update per token was what held the app to 32 annotators, and on shared cores each
    update is taken from vLLM's decode (BENCHMARKS.md)."""
    from limachat.demo.ui import PAGE_EVERY, _stream

    async def tokens():
        for i in range(400):  # 400 tokens at ~1,000 a second
            yield i
            await asyncio.sleep(0.001)

    async def go():
        start, seen = time.monotonic(), []
        async for item in _stream(tokens()):
            seen.append((item, time.monotonic() - start))
        return seen

    seen = asyncio.run(go())
    items = [i for i, _ in seen]
    wall = seen[-1][1]
    assert items[0] == 0 and items[-1] == 399 and items == sorted(items)
    assert len(items) <= wall / PAGE_EVERY + 2, (len(items), wall)
    assert all(b - a >= PAGE_EVERY * 0.9 for (_, a), (_, b) in zip(seen[1:-2], seen[2:-1]))
