"""The rating panel's components and the page script that gives every rating control a key.

The script only presses the page's own buttons (by their element ids), so a key does exactly what a
click does, through the same handler. Keys are ignored while the cursor is in a text field (Esc leaves
it; Enter sends and leaves it), so typing never rates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import gradio as gr

from limachat.demo import rating
from limachat.demo.history import View

SCRIPT = """
<script>
(() => {
  const shown = (id) => { const el = document.getElementById(id); return el && el.offsetParent !== null ? el : null; };
  const press = (id) => { const el = shown(id); if (!el) return false; el.click(); return true; };
  const keys = KEYS;
  let rated = null;  // the panel whose reply a key just rated: key c gives that rating its reason
  const reasonBox = (panel) => document.querySelector("#" + panel + "-reason input, #" + panel + "-reason textarea");
  // The focused side is an attribute of <body>; the stylesheet outlines that side's panel.
  const lane = (side) => { if (side) document.body.dataset.lane = side; return document.body.dataset.lane || "a"; };
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.isComposing) return;
    const t = e.target;
    const typing = t && (t.tagName === "TEXTAREA" || t.tagName === "INPUT" || t.isContentEditable);
    if (typing) {
      if (e.key === "Escape") t.blur();
      if (e.key === "Enter" && !e.shiftKey && t.closest("#chat-input, #compare-input, .reason-box"))
        setTimeout(() => t.blur(), 0);  // sent (or saved): the next key rates
      return;
    }
    const tab = shown("chat-bot") ? "chat" : shown("compare-a") ? "compare" : shown("queue-bot") ? "queue" : null;
    if (!tab) return;
    const panel = tab === "compare" ? "compare-" + lane() : tab;
    let done = false;
    if (keys[e.key]) {
      done = press(panel + "-" + keys[e.key]);
      if (done) rated = panel;
      if (done && tab === "compare") lane(lane() === "a" ? "b" : "a");  // on to the other side
    }
    else if (e.key === "c") {
      const box = reasonBox(rated && rated.startsWith(tab) ? rated : panel);
      if (box) { box.focus(); done = true; }
    }
    else if (e.key === "ArrowUp" || e.key === "k") done = press(panel + "-up");
    else if (e.key === "ArrowDown" || e.key === "j") done = press(panel + "-down");
    else if (e.key === "/") {
      const box = document.querySelector((tab === "chat" ? "#chat-input" : "#compare-input") + " textarea");
      if (box) { box.focus(); done = true; }
    } else if (tab === "compare") {
      if (e.key === "ArrowLeft" || e.key === "h") { lane("a"); done = true; }
      else if (e.key === "ArrowRight" || e.key === "l") { lane("b"); done = true; }
      else if (e.key === "a") done = press("verdict-a");
      else if (e.key === "t") done = press("verdict-tie");
      else if (e.key === "b") done = press("verdict-b");
      else if (e.key === "n") done = press("study-next");
      else if (e.key === "A") done = press("conversation-a");
      else if (e.key === "T") done = press("conversation-tie");
      else if (e.key === "B") done = press("conversation-b");
    }
    if (done) e.preventDefault();
  });
})();
</script>
""".replace("KEYS", json.dumps(rating.KEYS))

CSS = """
.rate-row {align-items: center; gap: 6px; flex-wrap: nowrap}
.rate-row > div:first-child {flex: 1 1 auto; min-width: 0}
body:not([data-lane=b]) #compare-a-panel, body[data-lane=b] #compare-b-panel {outline: 2px solid var(--color-accent); border-radius: 6px}
details.gold summary {cursor: pointer; color: var(--body-text-color-subdued); font-size: 0.9em}
"""


@dataclass
class Panel:
    caption: gr.Markdown
    buttons: dict[str, gr.Button]  # label -> button
    up: gr.Button
    down: gr.Button
    reason: gr.Textbox  # key c: a one-line reason for the label just given (Enter saves)

    @property
    def outputs(self) -> list:
        return [self.caption, *self.buttons.values()]


def panel(prefix: str, moves: bool = True) -> Panel:
    """Under a chat or a lane: what is focused, the three labels, earlier / later (`moves`), a reason."""
    with gr.Row(elem_classes="rate-row", elem_id=f"{prefix}-panel"):
        caption = gr.Markdown(rating.caption(View(), 0), elem_id=f"{prefix}-caption")
        buttons = {
            lab: gr.Button(f"{key} · {lab.capitalize()}", size="sm", elem_id=f"{prefix}-{lab}", scale=0, min_width=96)
            for key, lab in rating.KEYS.items()
        }
        up = gr.Button("↑", size="sm", elem_id=f"{prefix}-up", scale=0, min_width=40, visible=moves)
        down = gr.Button("↓", size="sm", elem_id=f"{prefix}-down", scale=0, min_width=40, visible=moves)
    reason = gr.Textbox(
        show_label=False,
        placeholder="c: a reason for this label (Enter saves, Esc leaves)",
        max_lines=1,
        container=False,
        elem_id=f"{prefix}-reason",
        elem_classes="reason-box",
    )
    return Panel(caption, buttons, up, down, reason)


def updates(v: View, back: int, name: str = "") -> list:
    """The caption and the three buttons (in the order `panel` builds them), the focused reply's label highlighted."""
    mine = rating.label(v, back)
    return [
        gr.update(value=rating.caption(v, back, name)),
        *(gr.update(variant="primary" if lab == mine else "secondary") for lab in rating.KEYS.values()),
    ]
