"""The Gradio app: `build_app(store, checkpoints, settings) -> gr.Blocks`.

Only layout and wiring live here: every event calls a plain handler in chat.py, compare.py or
collect.py with the dependencies this function closes over (no module globals). A handler's
ValueError (bad input, a missing annotator name) becomes a one-line message in the page.
"""

from __future__ import annotations

import asyncio
import logging
import random

import gradio as gr

from limachat.demo import chat, compare
from limachat.demo.answer import Deps
from limachat.demo.collect_tab import collect_tab, report_tab
from limachat.demo.ui import _stream, _user
from limachat.demo.history import FEEDBACK, View, judge_line
from limachat.demo.users import Logins
from limachat.dialogues.store import Store
from limachat.serve.checkpoints import Checkpoint
from limachat.settings import Settings

log = logging.getLogger(__name__)

OPTIONS = list(FEEDBACK.values())
CSS = """
.verdict button {min-width: 0}
footer {display: none !important}
"""


def _shown(v: View, label: str | None = None) -> dict:
    update = {"value": v.history, "feedback_value": v.feedback}
    return gr.update(**update, **({"label": label} if label else {}))


def build_app(store: Store, checkpoints: list[Checkpoint], settings: Settings, *, auth: bool = False,
              rng: random.Random | None = None) -> gr.Blocks:
    """The app over `store`. Replies a crashed earlier run left streaming are marked interrupted first.
    `rng` draws the blind sides (seed it for a reproducible draw)."""
    local = any(c.base_url == settings.local_base_url for c in checkpoints)
    deps = Deps(store, {c.name: c for c in checkpoints}, settings, auth=auth,
                fluency_url=settings.local_base_url if local else None, rng=rng or random.Random())
    repaired = store.repair_interrupted()
    if repaired:
        log.warning("%d replies were streaming when the app last stopped: marked interrupted (retry offers a new one)", repaired)
    names = deps.names

    def who(name: str | None, request: gr.Request | None) -> str | None:
        """The annotator: the logged-in user with --auth, else the name typed at the top."""
        if deps.auth and request is not None and request.username:
            return request.username
        return (name or "").strip() or None

    with gr.Blocks(title="limachat") as app:
        saved_name = gr.BrowserState("", storage_key="limachat-annotator", secret="limachat-annotator")
        with gr.Row(equal_height=True):
            gr.Markdown("## limachat\nChat with, compare and rate LIMA's zero-shot and dialogue checkpoints "
                        "(fail / pass / excellent under each reply).")
            annotator = gr.Textbox(label="Your name (annotator)", placeholder="needed before your first rating",
                                   interactive=not auth, max_lines=1, elem_id="annotator", scale=0, min_width=260)

        @app.load(inputs=[saved_name], outputs=[annotator])
        def _restore(saved, request: gr.Request):
            return who(saved, request) or ""

        annotator.change(lambda n: n, annotator, saved_name)

        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                chat_pickers = _chat_tab(deps, names, annotator, who, app)
            with gr.Tab("Compare", id="compare") as compare_tab:
                compare_pickers = _compare_tab(deps, names, annotator, who, compare_tab)
            with gr.Tab("Collect", id="collect") as collect_tab_:
                collect_tab(deps, names, chat_pickers + compare_pickers, annotator, who, collect_tab_)
            with gr.Tab("Report", id="report") as report_tab_:
                report_tab(deps, report_tab_)
    app.queue(default_concurrency_limit=64)
    return app


def _chat_tab(deps: Deps, names, annotator, who, app: gr.Blocks) -> list:
    state = gr.State(chat.blank())
    with gr.Row(equal_height=True):
        checkpoint = gr.Dropdown(names, value=names[-1] if names else None, label="Checkpoint", scale=1)
        # Filled when the page loads (with logins, a user's own sessions only).
        sessions = gr.Dropdown([], value=None, label="Resume a session", scale=3, elem_id="chat-sessions")
        new = gr.Button("New session", scale=0, min_width=140)
    bot = gr.Chatbot(label="Chat", feedback_options=OPTIONS, editable="all", height=460, elem_id="chat-bot",
                     placeholder="Say something. Rate each reply with the flag under it; edit a message with the pencil "
                                 "(a user message starts a new branch, a reply becomes a gold correction).")
    with gr.Row():
        box = gr.Textbox(show_label=False, placeholder="Message (Enter to send)", scale=8, elem_id="chat-input", max_lines=8)
        send = gr.Button("Send", variant="primary", scale=1, min_width=90, elem_id="chat-send")
        stop = gr.Button("Stop", variant="stop", scale=1, min_width=90, elem_id="chat-stop")
    with gr.Row(equal_height=True):
        show_judge = gr.Checkbox(False, label="Show the LLM judge's labels (label first yourself)", scale=1,
                                 elem_id="chat-show-judge")
        judged = gr.Markdown(elem_id="chat-judge", visible=False)

    async def on_send(st, text, ck, name, request: gr.Request):
        box_update = ""  # empty the box once; what is typed while the reply streams stays
        async for st2, v in _stream(chat.send(deps, st, text, ck, who(name, request))):
            yield st2, _shown(v), box_update
            box_update = gr.update()

    async def on_retry(st, ck, name, data: gr.RetryData, request: gr.Request):
        async for st2, v in _stream(chat.regenerate(deps, st, data.index, ck, who(name, request))):
            yield st2, _shown(v)

    async def on_edit(st, ck, name, data: gr.EditData, request: gr.Request):
        async for st2, v in _stream(chat.edit(deps, st, data.index, data.value, ck, who(name, request))):
            yield st2, _shown(v)

    def on_rate(st, name, data: gr.LikeData, request: gr.Request):
        return _shown(_user(lambda: chat.rate(deps, st, data.index, data.liked, who(name, request))))

    async def on_stop(st, name, request: gr.Request):
        await _settle(deps, st["ids"])
        return _shown(await deps.store.aio.read(chat.current, deps, st, who(name, request)))

    def on_resume(sid, name, request: gr.Request):
        if not sid:
            return gr.update(), gr.update()
        st, v = _user(lambda: chat.resume(deps, sid, who(name, request)))
        return st, _shown(v)

    def refresh_sessions(request: gr.Request):
        return gr.update(choices=chat.sessions(deps, user=request.username if deps.auth else None))

    def on_judge(st, show, name, request: gr.Request):
        if not show:
            return gr.update(visible=False)
        v = chat.current(deps, st, who(name, request))
        return gr.update(value=judge_line(deps.store, v), visible=True)

    runs = [send.click(on_send, [state, box, checkpoint, annotator], [state, bot, box]),
            box.submit(on_send, [state, box, checkpoint, annotator], [state, bot, box]),
            bot.retry(on_retry, [state, checkpoint, annotator], [state, bot]),
            bot.edit(on_edit, [state, checkpoint, annotator], [state, bot])]
    for r in runs:
        r.then(refresh_sessions, None, sessions).then(on_judge, [state, show_judge, annotator], judged)
    show_judge.change(on_judge, [state, show_judge, annotator], judged)
    stop.click(on_stop, [state, annotator], bot, cancels=runs)
    bot.like(on_rate, [state, annotator], bot)
    new.click(lambda: (chat.blank(), gr.update(value=[], feedback_value=[]), None), None, [state, bot, sessions])
    sessions.select(on_resume, [sessions, annotator], [state, bot]).then(on_judge, [state, show_judge, annotator], judged)
    sessions.focus(refresh_sessions, None, sessions)
    app.load(refresh_sessions, None, sessions)
    def on_name(st, name, request: gr.Request):  # the ratings shown are the annotator's own
        return _shown(chat.current(deps, st, who(name, request)))

    annotator.blur(on_name, [state, annotator], bot)
    bot.clear(chat.blank, None, state)
    return [checkpoint]


async def _settle(deps: Deps, ids: list[str], timeout: float = 3.0) -> None:
    """After a stop, wait (briefly) until the cancelled reply has written its final status."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end and "streaming" in (await deps.store.aio.statuses(ids)).values():
        await asyncio.sleep(0.05)


def _compare_tab(deps: Deps, names, annotator, who, tab) -> list:
    state = gr.State(compare.blank())
    set_name, prompts = compare.prompt_set(None)
    pset = gr.State({"name": set_name, "prompts": prompts})
    with gr.Row(equal_height=True):
        left = gr.Dropdown(names, value=names[0] if names else None, label="Left", scale=1)
        right = gr.Dropdown(names, value=names[1] if len(names) > 1 else None, label="Right", scale=1)
        blind = gr.Checkbox(True, label="Blind (show A / B; names revealed on close)", scale=1)
        new = gr.Button("New comparison", scale=0, min_width=150)
        close = gr.Button("Close and reveal", scale=0, min_width=150, elem_id="compare-close")
    with gr.Accordion("Start from a prompt set", open=True):
        with gr.Row():
            pick = gr.Dropdown(_prompt_choices(prompts), value=None, label=f"Prompt ({set_name} set)", scale=3,
                               elem_id="compare-prompt")
            upload = gr.File(label="Load a prompt set (.jsonl with \"prompt\", or .txt: one per line)",
                             file_types=[".jsonl", ".txt"], scale=1, height=90)
        cover = gr.Dataframe(_coverage(deps, pset.value), label="Sessions per prompt and checkpoint",
                             interactive=False, wrap=True, max_height=220)
    with gr.Row():
        bot_a = gr.Chatbot(label="A", feedback_options=OPTIONS, height=420, elem_id="compare-a")
        bot_b = gr.Chatbot(label="B", feedback_options=OPTIONS, height=420, elem_id="compare-b")
    with gr.Row():
        box = gr.Textbox(show_label=False, placeholder="Message to both (Enter to send)", scale=8, elem_id="compare-input")
        send = gr.Button("Send to both", variant="primary", scale=1, min_width=120, elem_id="compare-send")
        stop = gr.Button("Stop", variant="stop", scale=1, min_width=90)
    with gr.Row(elem_classes="verdict"):
        better_a = gr.Button("◀ Left better", elem_id="verdict-a")
        tie = gr.Button("Tie", elem_id="verdict-tie")
        better_b = gr.Button("Right better ▶", elem_id="verdict-b")
    said = gr.Markdown(elem_id="compare-status")
    with gr.Row(equal_height=True):
        show_judge = gr.Checkbox(False, label="Show the LLM judge's labels (label first yourself)", scale=1,
                                 elem_id="compare-show-judge")
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
        st, message = compare.close(deps, st)
        va, vb = compare.views(deps, st, who(name, request))
        n = compare.side_names(st)
        return st, _shown(va, n["a"]), _shown(vb, n["b"]), message, _coverage(deps, ps)

    def on_new(b_):
        st = {**compare.blank(), "blind": b_}
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
        return ps, gr.update(choices=_prompt_choices(items), value=None, label=f"Prompt ({name} set)"), _coverage(deps, ps)

    async def on_stop(st, name, request: gr.Request):
        await _settle(deps, st["a"][-1:] + st["b"][-1:])
        va, vb = await deps.store.aio.read(compare.views, deps, st, who(name, request))
        return _shown(va), _shown(vb)

    def on_judge(st, show, name, request: gr.Request):
        if not show:
            return gr.update(visible=False)
        va, vb = compare.views(deps, st, who(name, request))
        n = compare.side_names(st)
        return gr.update(value=judge_line(deps.store, va, f"{n['a']}: ") + "  \n" + judge_line(deps.store, vb, f"{n['b']}: "),
                         visible=True)

    inputs = [state, box, left, right, blind, annotator]
    runs = [send.click(on_send, inputs, [state, bot_a, bot_b, box]), box.submit(on_send, inputs, [state, bot_a, bot_b, box]),
            bot_a.retry(retrier("a"), [state, annotator], [state, bot_a, bot_b]),
            bot_b.retry(retrier("b"), [state, annotator], [state, bot_a, bot_b])]
    for r in runs:
        r.then(lambda ps: _coverage(deps, ps), pset, cover).then(on_judge, [state, show_judge, annotator], judged)
    show_judge.change(on_judge, [state, show_judge, annotator], judged)
    stop.click(on_stop, [state, annotator], [bot_a, bot_b], cancels=runs)
    bot_a.like(rater("a"), [state, annotator], bot_a)
    bot_b.like(rater("b"), [state, annotator], bot_b)
    for button, choice in ((better_a, "a"), (tie, "tie"), (better_b, "b")):
        button.click(judge(choice), [state, annotator], said)
    close.click(on_close, [state, pset, annotator], [state, bot_a, bot_b, said, cover])
    new.click(on_new, blind, [state, bot_a, bot_b, said, pick])
    blind.change(lambda st, b_: labels({**st, "blind": b_} if st["session"] is None else st), [state, blind], [bot_a, bot_b])
    pick.select(on_pick, [state, pset, pick], [state, box])
    upload.upload(on_upload, upload, [pset, pick, cover])
    tab.select(lambda ps: _coverage(deps, ps), pset, cover)  # other people's sessions count too
    return [left, right]


def _prompt_choices(prompts) -> list[tuple[str, str]]:
    return [(f"{p['id']} · {p['prompt'][:90]}", p["id"]) for p in prompts]


def _coverage(deps: Deps, ps: dict) -> dict:
    headers, rows = compare.coverage(deps, ps["name"], ps["prompts"])
    return {"data": rows, "headers": headers}


def launch(app: gr.Blocks, settings: Settings, *, users: dict[str, str] | None = None, block: bool = True):
    """Serve the app on settings.app.host:port; with `users` (see demo.users) people log in."""
    files = [str(settings.home / "exports"), str(settings.home / "reports")]
    auth = Logins(users).check if users else None
    host = settings.app.host
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host  # Gradio takes IPv6 in brackets
    return app.launch(server_name=host, server_port=settings.app.port, auth=auth, quiet=True,
                      prevent_thread_lock=not block, css=CSS, allowed_paths=files)


def app_checkpoints(settings: Settings) -> list[Checkpoint]:
    """The configured checkpoints, plus adapters the local server serves beyond them (trained
    from the Collect tab or with `limachat train --name`)."""
    import httpx

    checkpoints = settings.resolved_checkpoints()
    known = {c.model for c in checkpoints if c.base_url == settings.local_base_url}
    try:
        served = httpx.get(settings.local_base_url + "/models", timeout=2).json()["data"]
    except (httpx.HTTPError, ValueError, KeyError):
        return checkpoints
    taken = {c.name for c in checkpoints}
    for m in served:
        if m.get("parent") and m["id"] not in known and m["id"] not in taken:
            checkpoints.append(Checkpoint(name=m["id"], model=m["id"], base_url=settings.local_base_url))
    return checkpoints
