"""The Compare tab's layout and wiring: two lanes side by side, each with its rating panel; resume
a comparison; walk a study (key n). Every event calls a plain handler in compare.py."""

from __future__ import annotations

import gradio as gr

from limachat.demo import compare, rating
from limachat.demo.answer import Deps
from limachat.demo.history import FEEDBACK, judge_line
from limachat.demo.panel import panel, updates
from limachat.demo.ui import _error, _settle, _shown, _stream, _user
from limachat.dialogues import study

OPTIONS = list(FEEDBACK.values())


def compare_tab(deps: Deps, names, annotator, who, tab) -> list:
    state = gr.State(compare.blank())
    set_name, prompts = compare.prompt_set(None)
    pset = gr.State({"name": set_name, "prompts": prompts})
    with gr.Row(equal_height=True):
        left = gr.Dropdown(names, value=names[0] if names else None, label="Left", scale=1)
        right = gr.Dropdown(names, value=names[1] if len(names) > 1 else None, label="Right", scale=1)
        blind = gr.Checkbox(True, label="Blind (show A / B; names revealed on close)", scale=1)
        history = gr.Radio(
            list(study.CONDITIONS),
            value="own",
            label="History",
            info="shared: after each verdict both sides continue from the preferred reply (A's on a tie)",
            scale=1,
            elem_id="compare-history",
        )
        new = gr.Button("New comparison", scale=0, min_width=150)
        close = gr.Button("Close and reveal", scale=0, min_width=150, elem_id="compare-close")
    with gr.Row(equal_height=True):
        resumable = gr.Dropdown([], value=None, label="Resume a comparison", scale=3, elem_id="compare-sessions")
        studied = gr.Dropdown(
            [s["name"] for s in deps.store.studies()], value=None, label="Study", scale=1, elem_id="compare-study"
        )
        nxt = gr.Button("Next study prompt (n)", scale=0, min_width=170, elem_id="study-next")
    study_said = gr.Markdown(elem_id="study-status")
    with gr.Accordion("Start from a prompt set", open=False, elem_id="compare-prompt-set"):
        with gr.Row():
            pick = gr.Dropdown(
                _prompt_choices(prompts),
                value=None,
                label=f"Prompt ({set_name} set)",
                scale=3,
                elem_id="compare-prompt",
            )
            upload = gr.File(
                label='Load a prompt set (.jsonl with "prompt", or .txt: one per line)',
                file_types=[".jsonl", ".txt"],
                scale=1,
                height=90,
            )
        cover = gr.Dataframe(
            _coverage(deps, pset.value),
            label="Sessions per prompt and checkpoint",
            interactive=False,
            wrap=True,
            max_height=220,
        )
    with gr.Row():
        with gr.Column():
            bot_a = gr.Chatbot(label="A", feedback_options=OPTIONS, height=420, elem_id="compare-a")
            panel_a = panel("compare-a")
        with gr.Column():
            bot_b = gr.Chatbot(label="B", feedback_options=OPTIONS, height=420, elem_id="compare-b")
            panel_b = panel("compare-b")
    backs = gr.State({"a": 0, "b": 0})
    gr.Markdown(rating.HELP, elem_id="compare-keys")
    with gr.Row():
        box = gr.Textbox(
            show_label=False,
            placeholder="Message to both (Enter to send; / to get here)",
            scale=8,
            elem_id="compare-input",
        )
        send = gr.Button("Send to both", variant="primary", scale=1, min_width=120, elem_id="compare-send")
        stop = gr.Button("Stop", variant="stop", scale=1, min_width=90)
    with gr.Row(elem_classes="verdict"):
        better_a = gr.Button("◀ Left better (a)", elem_id="verdict-a")
        tie = gr.Button("Tie (t)", elem_id="verdict-tie")
        better_b = gr.Button("Right better (b) ▶", elem_id="verdict-b")
    with gr.Row(elem_classes="verdict"):
        whole = {
            choice: gr.Button(text, size="sm", elem_id=f"conversation-{choice}")
            for choice, text in (
                ("a", "Whole conversation: left better (A)"),
                ("tie", "Whole conversation: tie (T)"),
                ("b", "Whole conversation: right better (B)"),
            )
        }
    said = gr.Markdown(elem_id="compare-status")
    with gr.Row(equal_height=True):
        show_judge = gr.Checkbox(
            False, label="Show the LLM judge's labels (label first yourself)", scale=1, elem_id="compare-show-judge"
        )
        judged = gr.Markdown(elem_id="compare-judge", visible=False)

    def labels(st):
        n = compare.side_names(st)
        return gr.update(label=n["a"]), gr.update(label=n["b"])

    async def on_send(st, text, l_, r_, b_, name, request: gr.Request):
        box_update = ""
        async for st2, va, vb in _stream(compare.send(deps, st, text, l_, r_, b_, who(name, request))):
            n = compare.side_names(st2)
            yield st2, _shown(va, n["a"]), _shown(vb, n["b"]), box_update
            box_update = gr.update()

    def retrier(lane):
        async def on_retry(st, name, request: gr.Request):
            async for st2, va, vb in _stream(compare.retry(deps, st, lane, who(name, request))):
                n = compare.side_names(st2)
                yield st2, _shown(va, n["a"]), _shown(vb, n["b"])

        return on_retry

    def rater(lane):
        def on_rate(st, name, data: gr.LikeData, request: gr.Request):
            return _shown(_user(lambda: compare.rate(deps, st, lane, data.index, data.liked, who(name, request))))

        return on_rate

    def judge(choice):
        def on_verdict(st, name, request: gr.Request):
            return _user(lambda: compare.verdict(deps, st, choice, who(name, request)))

        return on_verdict

    def on_close(st, ps, name, request: gr.Request):
        st, message = _user(lambda: compare.close(deps, st))
        va, vb = compare.views(deps, st, who(name, request))
        n = compare.side_names(st)
        return st, _shown(va, n["a"]), _shown(vb, n["b"]), message, _coverage(deps, ps)

    def on_new(b_, h_):
        st = {**compare.blank(), "blind": b_, "history": h_}
        side = compare.side_names(st)
        return st, gr.update(value=[], label=side["a"]), gr.update(value=[], label=side["b"]), "", None

    def on_pick(st, ps, prompt_id):
        chosen = next((p for p in ps["prompts"] if p["id"] == prompt_id), None)
        if chosen is None:
            return st, gr.update()
        return compare.pick_prompt(st, ps["name"], chosen)

    def on_upload(path):
        if not path:
            return gr.update(), gr.update(), gr.update()
        name, items = _user(lambda: compare.prompt_set(path))
        ps = {"name": name, "prompts": items}
        return (
            ps,
            gr.update(choices=_prompt_choices(items), value=None, label=f"Prompt ({name} set)"),
            _coverage(deps, ps),
        )

    async def on_stop(st, name, request: gr.Request):
        await _settle(deps, st["a"][-1:] + st["b"][-1:])
        va, vb = await deps.store.aio.read(compare.views, deps, st, who(name, request))
        return _shown(va), _shown(vb)

    def on_judge(st, show, name, request: gr.Request):
        if not show:
            return gr.update(visible=False)
        va, vb = compare.views(deps, st, who(name, request))
        n = compare.side_names(st)
        return gr.update(
            value=judge_line(deps.store, va, f"{n['a']}: ") + "  \n" + judge_line(deps.store, vb, f"{n['b']}: "),
            visible=True,
        )

    def panels(st, bk, name, request: gr.Request):
        va, vb = compare.views(deps, st, who(name, request))
        n = compare.side_names(st)
        return [*updates(va, bk["a"], f"{n['a']}: "), *updates(vb, bk["b"], f"{n['b']}: ")]

    def newest(st, name, request: gr.Request):
        """After new replies, a resume or a close: the newest replies focused, the verdicts and the study."""
        bk = {"a": 0, "b": 0}
        who_ = who(name, request)
        return [
            bk,
            *panels(st, bk, name, request),
            compare.verdicts_line(deps, st, who_),
            _user(lambda: compare.study_line(deps, st, who_)),
            # the condition of the conversation shown (a study's, or a started one's, is fixed)
            gr.update(value=st.get("history") or "own", interactive=st["session"] is None and not st.get("study")),
        ]

    def key_rater(lane, label):
        def on_key(st, bk, name, request: gr.Request):
            v = compare.side(deps, st, lane, who(name, request))
            index = rating.focused(v, bk[lane])
            if index is None:
                raise gr.Error("No reply to rate yet.", print_exception=False)
            v = _user(lambda: compare.rate(deps, st, lane, index, FEEDBACK[label], who(name, request)))
            return [
                _shown(v),
                *panels(st, bk, name, request),
                _user(lambda: compare.study_line(deps, st, who(name, request))),
            ]

        return on_key

    def mover(lane, step):
        def on_move(st, bk, name, request: gr.Request):
            v = compare.side(deps, st, lane, who(name, request))
            bk = {**bk, lane: rating.move(v, bk[lane], step)}
            return [bk, *panels(st, bk, name, request)]

        return on_move

    def on_resume(sid, name, request: gr.Request):
        if not sid:
            return [gr.update()] * 3
        st, va, vb = _user(lambda: compare.resume(deps, sid, who(name, request)))
        n = compare.side_names(st)
        return st, _shown(va, n["a"]), _shown(vb, n["b"])

    def refresh_sessions(request: gr.Request):
        return gr.update(choices=compare.sessions(deps, user=request.username if deps.auth else None))

    async def on_next(st, study_name, name, request: gr.Request):
        who_ = who(name, request)
        try:
            st2, prompt = await deps.store.aio.read(compare.study_next, deps, study_name, who_)
        except study.WalkDone as done:
            gr.Info(str(done))
            yield st, gr.update(), gr.update(), gr.update()
            return
        except Exception as e:  # noqa: BLE001 - as every handler's
            raise _error(e) from None
        if prompt is None:  # a conversation of the walk already started: resume it
            va, vb = await deps.store.aio.read(compare.views, deps, st2, who_)
            n = compare.side_names(st2)
            yield st2, _shown(va, n["a"]), _shown(vb, n["b"]), ""
            return
        async for st3, va, vb in _stream(compare.send(deps, st2, prompt, None, None, st2["blind"], who_)):
            n = compare.side_names(st3)
            yield st3, _shown(va, n["a"]), _shown(vb, n["b"]), ""

    after = [backs, *panel_a.outputs, *panel_b.outputs, said, study_said, history]
    inputs = [state, box, left, right, blind, annotator]
    runs = [
        send.click(on_send, inputs, [state, bot_a, bot_b, box]),
        box.submit(on_send, inputs, [state, bot_a, bot_b, box]),
        bot_a.retry(retrier("a"), [state, annotator], [state, bot_a, bot_b]),
        bot_b.retry(retrier("b"), [state, annotator], [state, bot_a, bot_b]),
        nxt.click(on_next, [state, studied, annotator], [state, bot_a, bot_b, box]),
    ]
    for r in runs:
        r.then(newest, [state, annotator], after).then(lambda ps: _coverage(deps, ps), pset, cover).then(
            on_judge, [state, show_judge, annotator], judged
        )
    show_judge.change(on_judge, [state, show_judge, annotator], judged)
    stop.click(on_stop, [state, annotator], [bot_a, bot_b], cancels=runs).then(newest, [state, annotator], after)
    for bot, lane, pn in ((bot_a, "a", panel_a), (bot_b, "b", panel_b)):
        bot.like(rater(lane), [state, annotator], bot).then(
            panels, [state, backs, annotator], [*panel_a.outputs, *panel_b.outputs]
        )
        for label, button in pn.buttons.items():
            button.click(
                key_rater(lane, label), [state, backs, annotator], [bot, *panel_a.outputs, *panel_b.outputs, study_said]
            )
        pn.up.click(mover(lane, -1), [state, backs, annotator], [backs, *panel_a.outputs, *panel_b.outputs])
        pn.down.click(mover(lane, 1), [state, backs, annotator], [backs, *panel_a.outputs, *panel_b.outputs])
    for button, choice in ((better_a, "a"), (tie, "tie"), (better_b, "b")):
        button.click(judge(choice), [state, annotator], said)

    def judge_whole(choice):
        def on_whole(st, name, request: gr.Request):
            return _user(lambda: compare.conversation_verdict(deps, st, choice, who(name, request)))

        return on_whole

    for choice, button in whole.items():
        button.click(judge_whole(choice), [state, annotator], said)

    def reasoner(lane):
        def on_reason(st, bk, text, name, request: gr.Request):
            who_ = who(name, request)
            _user(lambda: rating.give_reason(deps.store, compare.side(deps, st, lane, who_), bk[lane], text, who_))
            return ["", *panels(st, bk, name, request)]

        return on_reason

    for lane, pn in (("a", panel_a), ("b", panel_b)):
        pn.reason.submit(
            reasoner(lane), [state, backs, pn.reason, annotator], [pn.reason, *panel_a.outputs, *panel_b.outputs]
        )
    close.click(on_close, [state, pset, annotator], [state, bot_a, bot_b, said, cover]).then(
        refresh_sessions, None, resumable
    )
    new.click(on_new, [blind, history], [state, bot_a, bot_b, said, pick]).then(newest, [state, annotator], after)
    resumable.select(on_resume, [resumable, annotator], [state, bot_a, bot_b]).then(newest, [state, annotator], after)
    resumable.focus(refresh_sessions, None, resumable)
    studied.focus(lambda: gr.update(choices=[s["name"] for s in deps.store.studies()]), None, studied)
    blind.change(
        lambda st, b_: labels({**st, "blind": b_} if st["session"] is None else st), [state, blind], [bot_a, bot_b]
    )
    history.input(
        lambda st, h_: {**st, "history": h_} if st["session"] is None and not st.get("study") else st,
        [state, history],
        state,
    ).then(newest, [state, annotator], after)
    pick.select(on_pick, [state, pset, pick], [state, box])
    upload.upload(on_upload, upload, [pset, pick, cover])
    tab.select(lambda ps: _coverage(deps, ps), pset, cover).then(refresh_sessions, None, resumable)
    return [left, right]


def _prompt_choices(prompts) -> list[tuple[str, str]]:
    return [(f"{p['id']} · {p['prompt'][:90]}", p["id"]) for p in prompts]


def _coverage(deps: Deps, ps: dict) -> dict:
    headers, rows = compare.coverage(deps, ps["name"], ps["prompts"])
    return {"data": rows, "headers": headers}
