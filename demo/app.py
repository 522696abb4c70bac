"""The Gradio app: `build_app(store, checkpoints, settings) -> gr.Blocks`.

Only layout and wiring live here: every event calls a plain handler in chat.py, compare.py or
collect.py with the dependencies this function closes over (no module globals). A handler's
ValueError (bad input, a missing annotator name) becomes a one-line message in the page.
"""

from __future__ import annotations

import logging
import random

import gradio as gr

from limachat.demo import chat, rating
from limachat.demo.answer import Deps
from limachat.demo.collect_tab import collect_tab, report_tab
from limachat.demo.compare_tab import compare_tab
from limachat.demo.history import FEEDBACK, judge_line
from limachat.demo.panel import CSS as PANEL_CSS
from limachat.demo.panel import SCRIPT, panel, updates
from limachat.demo.queue_tab import queue_tab
from limachat.demo.study_tab import study_tab
from limachat.demo.ui import _settle, _shown, _stream, _user
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


def build_app(
    store: Store,
    checkpoints: list[Checkpoint],
    settings: Settings,
    *,
    auth: bool = False,
    rng: random.Random | None = None,
) -> gr.Blocks:
    """The app over `store`. Replies a crashed earlier run left streaming are marked interrupted first.
    `rng` draws the blind sides (seed it for a reproducible draw)."""
    local = any(c.base_url == settings.local_base_url for c in checkpoints)
    deps = Deps(
        store,
        {c.name: c for c in checkpoints},
        settings,
        auth=auth,
        fluency_url=settings.local_base_url if local else None,
        rng=rng or random.Random(),
    )
    repaired = store.repair_interrupted()
    if repaired:
        log.warning(
            "%d replies were streaming when the app last stopped: marked interrupted (retry offers a new one)", repaired
        )
    names = deps.names

    def who(name: str | None, request: gr.Request | None) -> str | None:
        """The annotator: the logged-in user with --auth, else the name typed at the top."""
        if deps.auth and request is not None and request.username:
            return request.username
        return (name or "").strip() or None

    with gr.Blocks(title="limachat") as app:
        saved_name = gr.BrowserState("", storage_key="limachat-annotator", secret="limachat-annotator")
        with gr.Row(equal_height=True):
            gr.Markdown(
                "## limachat\nChat with, compare and rate LIMA's zero-shot and dialogue checkpoints "
                "(fail / pass / excellent under each reply)."
            )
            annotator = gr.Textbox(
                label="Your name (annotator)",
                placeholder="needed before your first rating",
                interactive=not auth,
                max_lines=1,
                elem_id="annotator",
                scale=0,
                min_width=260,
            )

        @app.load(inputs=[saved_name], outputs=[annotator])
        def _restore(saved, request: gr.Request):
            # Nothing remembered (a first visit): leave the box alone, or a name typed while the page was
            # still loading would be wiped by this late answer.
            return who(saved, request) or gr.skip()

        annotator.change(lambda n: n, annotator, saved_name)

        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                chat_pickers = _chat_tab(deps, names, annotator, who, app)
            with gr.Tab("Compare", id="compare") as compare_tab_:
                compare_pickers = compare_tab(deps, names, annotator, who, compare_tab_)
            with gr.Tab("Study", id="study") as study_tab_:
                study_tab(deps, names, study_tab_)
            with gr.Tab("Queue", id="queue") as queue_tab_:
                queue_tab(deps, annotator, who, queue_tab_)
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
    bot = gr.Chatbot(
        label="Chat",
        feedback_options=OPTIONS,
        editable="all",
        height=460,
        elem_id="chat-bot",
        placeholder="Say something. Rate each reply with the keys 1 / 2 / 3 (or the buttons below, or the flag under "
        "it); edit a message with the pencil (a user message starts a new branch, a reply becomes "
        "a gold correction).",
    )
    rate = panel("chat")
    back = gr.State(0)  # the focused reply: how many back from the newest
    with gr.Row():
        box = gr.Textbox(
            show_label=False,
            placeholder="Message (Enter to send; / to get here)",
            scale=8,
            elem_id="chat-input",
            max_lines=8,
        )
        send = gr.Button("Send", variant="primary", scale=1, min_width=90, elem_id="chat-send")
        stop = gr.Button("Stop", variant="stop", scale=1, min_width=90, elem_id="chat-stop")
    with gr.Row(equal_height=True):
        show_judge = gr.Checkbox(
            False, label="Show the LLM judge's labels (label first yourself)", scale=1, elem_id="chat-show-judge"
        )
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

    def on_panel(st, b, name, request: gr.Request):
        return updates(chat.current(deps, st, who(name, request)), b)

    def newest(st, name, request: gr.Request):  # after a new reply or a resume, the newest is focused
        return [0, *updates(chat.current(deps, st, who(name, request)), 0)]

    def rater(label):
        def on_key(st, b, name, request: gr.Request):
            v = chat.current(deps, st, who(name, request))
            index = rating.focused(v, b)
            if index is None:
                raise gr.Error("No reply to rate yet.", print_exception=False)
            v = _user(lambda: chat.rate(deps, st, index, FEEDBACK[label], who(name, request)))
            return [_shown(v), *updates(v, b)]

        return on_key

    def mover(step):
        def on_move(st, b, name, request: gr.Request):
            v = chat.current(deps, st, who(name, request))
            b = rating.move(v, b, step)
            return [b, *updates(v, b)]

        return on_move

    runs = [
        send.click(on_send, [state, box, checkpoint, annotator], [state, bot, box]),
        box.submit(on_send, [state, box, checkpoint, annotator], [state, bot, box]),
        bot.retry(on_retry, [state, checkpoint, annotator], [state, bot]),
        bot.edit(on_edit, [state, checkpoint, annotator], [state, bot]),
    ]
    for r in runs:
        r.then(newest, [state, annotator], [back, *rate.outputs]).then(refresh_sessions, None, sessions).then(
            on_judge, [state, show_judge, annotator], judged
        )
    show_judge.change(on_judge, [state, show_judge, annotator], judged)
    stop.click(on_stop, [state, annotator], bot, cancels=runs).then(newest, [state, annotator], [back, *rate.outputs])
    bot.like(on_rate, [state, annotator], bot).then(on_panel, [state, back, annotator], rate.outputs)
    for label, button in rate.buttons.items():
        button.click(rater(label), [state, back, annotator], [bot, *rate.outputs])

    def on_reason(st, b, text, name, request: gr.Request):
        who_ = who(name, request)
        _user(lambda: rating.give_reason(deps.store, chat.current(deps, st, who_), b, text, who_))
        return ["", *updates(chat.current(deps, st, who_), b)]

    rate.reason.submit(on_reason, [state, back, rate.reason, annotator], [rate.reason, *rate.outputs])
    rate.up.click(mover(-1), [state, back, annotator], [back, *rate.outputs])
    rate.down.click(mover(1), [state, back, annotator], [back, *rate.outputs])
    new.click(lambda: (chat.blank(), gr.update(value=[], feedback_value=[]), None), None, [state, bot, sessions]).then(
        newest, [state, annotator], [back, *rate.outputs]
    )
    sessions.select(on_resume, [sessions, annotator], [state, bot]).then(
        on_judge, [state, show_judge, annotator], judged
    ).then(newest, [state, annotator], [back, *rate.outputs])
    sessions.focus(refresh_sessions, None, sessions)
    app.load(refresh_sessions, None, sessions)

    def on_name(st, b, name, request: gr.Request):  # the ratings shown are the annotator's own
        v = chat.current(deps, st, who(name, request))
        return [_shown(v), *updates(v, b)]

    annotator.blur(on_name, [state, back, annotator], [bot, *rate.outputs])
    bot.clear(chat.blank, None, state)
    return [checkpoint]


def launch(app: gr.Blocks, settings: Settings, *, users: dict[str, str] | None = None, block: bool = True):
    """Serve the app on settings.app.host:port; with `users` (see demo.users) people log in."""
    files = [str(settings.layout.exports), str(settings.layout.reports)]
    auth = Logins(users).check if users else None
    host = settings.app.host
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host  # Gradio takes IPv6 in brackets
    return app.launch(
        server_name=host,
        server_port=settings.app.port,
        auth=auth,
        quiet=True,
        prevent_thread_lock=not block,
        css=CSS + PANEL_CSS,
        head=SCRIPT,
        allowed_paths=files,
    )


def app_checkpoints(settings: Settings) -> list[Checkpoint]:
    """The configured checkpoints, plus adapters the local server serves beyond them (trained
    from the Collect tab or with `limachat train --name`)."""
    import httpx

    checkpoints = settings.resolved_checkpoints()
    known = {c.model for c in checkpoints if c.base_url == settings.local_base_url}
    try:
        served = httpx.get(settings.local_base_url + "/models", headers=settings.local_headers, timeout=2).json()[
            "data"
        ]
    except (httpx.HTTPError, ValueError, KeyError):
        return checkpoints
    taken = {c.name for c in checkpoints}
    for m in served:
        if m.get("parent") and m["id"] not in known and m["id"] not in taken:
            checkpoints.append(settings.local(m["id"]))
    return checkpoints
