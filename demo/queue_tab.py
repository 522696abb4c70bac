"""The Queue tab's layout and wiring: pick a queue, label its replies one at a time with the keys, give
a reason, make a queue. Every event calls a plain handler in queue.py."""

from __future__ import annotations

import gradio as gr

from limachat.demo import queue
from limachat.demo.answer import Deps
from limachat.demo.panel import panel
from limachat.demo.ui import _shown, _user
from limachat.dialogues.values import QUEUE_SOURCES


def queue_tab(deps: Deps, annotator, who, tab) -> None:
    gr.Markdown(
        "A queue holds stored replies that want more ratings (a split study's shared conversations, replies only "
        "one person rated, ...) or an adjudicator's final label. Label each with **1 / 2 / 3**; the next one "
        "comes by itself. **c** gives the label just given a reason. Nobody's labels are shown before you give "
        "yours, but to an adjudicator."
    )
    state = gr.State(queue.blank())
    with gr.Row(equal_height=True):
        pick = gr.Dropdown(queue.names(deps), value=None, label="Queue", scale=3, elem_id="queue-pick")
        refresh = gr.Button("Refresh", scale=0, elem_id="queue-refresh")
    with gr.Accordion("New queue", open=False, elem_id="queue-new"):
        with gr.Row():
            name = gr.Textbox(label="Name", max_lines=1, elem_id="queue-name")
            source = gr.Dropdown(list(QUEUE_SOURCES), value="disagree", label="Replies from", elem_id="queue-source")
            studied = gr.Dropdown(
                [s["name"] for s in deps.store.studies()], value=None, label="Study (optional)", elem_id="queue-study"
            )
        with gr.Row():
            needs = gr.Number(None, precision=0, label="Ratings per reply (blank: the default)", elem_id="queue-needs")
            adjudicate = gr.Checkbox(False, label="To adjudicate (a final label)", elem_id="queue-adjudicate")
            adjudicators = gr.Textbox(
                label="Adjudicators (comma-separated; blank: the study's)", max_lines=1, elem_id="queue-adjudicators"
            )
        create = gr.Button("Create queue", variant="primary", elem_id="queue-create")
        created = gr.Markdown(elem_id="queue-created")
    status = gr.Markdown(elem_id="queue-status")
    bot = gr.Chatbot(label="The reply and its conversation", height=420, elem_id="queue-bot")
    rate = panel("queue", moves=False)
    others = gr.Markdown(elem_id="queue-others")
    said = gr.Markdown(elem_id="queue-said")

    def shown(st, name_, request: gr.Request):
        st2, v, caption, seen, progress = _user(lambda: queue.show(deps, st, who(name_, request)))
        return st2, _shown(v), caption, seen, progress

    def on_pick(chosen, name_, request: gr.Request):
        return shown({**queue.blank(), "queue": chosen}, name_, request)

    def labeller(label):
        def on_label(st, name_, request: gr.Request):
            st2 = _user(lambda: queue.rate(deps, st, label, who(name_, request)))
            return (*shown(st2, name_, request), "")

        return on_label

    def on_reason(st, text, name_, request: gr.Request):
        return "", _user(lambda: queue.reason(deps, st, text, who(name_, request)))

    def on_create(n, src, stu, k, adj, people):
        message = _user(lambda: queue.create(deps, n, src, stu, k, adj, people))
        return message, gr.update(choices=queue.names(deps), value=n.strip())

    view_out = [state, bot, rate.caption, others, status]
    pick.select(on_pick, [pick, annotator], view_out)
    refresh.click(on_pick, [pick, annotator], view_out)
    for label, button in rate.buttons.items():
        button.click(labeller(label), [state, annotator], [*view_out, said])
    rate.reason.submit(on_reason, [state, rate.reason, annotator], [rate.reason, said])
    create.click(on_create, [name, source, studied, needs, adjudicate, adjudicators], [created, pick]).then(
        on_pick, [pick, annotator], view_out
    )
    tab.select(lambda: gr.update(choices=queue.names(deps)), None, pick).then(
        lambda: gr.update(choices=[s["name"] for s in deps.store.studies()]), None, studied
    )
