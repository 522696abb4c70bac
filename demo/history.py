"""The one converter between stored turns and Gradio 6 chat history.

A branch of the turn tree (root to leaf) becomes a list of `{"role", "content"}` messages for
`gr.Chatbot`, the annotator's labels for its assistant messages (`feedback_value`), and the turn
id behind each message, so an event on message `i` (a rating, an edit, a retry) finds its turn.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from typing import Any

from limachat.dialogues.store import Store

# The fail / pass / excellent labels as the chat shows them (options other than Like/Dislike sit
# behind Gradio's flag icon).
FEEDBACK = {"fail": "Fail", "pass": "Pass", "excellent": "Excellent"}
LABEL_OF = {v: k for k, v in FEEDBACK.items()}

_CODE = re.compile(r"(```.*?(?:```|$)|`[^`\n]*`)", re.S)


def inert(text: str) -> str:
    """Markdown stays markdown, HTML shows as the text it is: `<` and `&` are escaped outside code
    (inside code, Markdown already shows them literally). A reply or prompt holding `<script>` or
    `<img onerror=...>` is displayed, never run."""
    parts = _CODE.split(text)
    return "".join(p if i % 2 else html.escape(p, quote=False).replace("&gt;", ">") for i, p in enumerate(parts))


def dropped_notice(n: int, checkpoint: str | None) -> str:
    return (f"*Note: the {n} oldest exchange{'s' if n > 1 else ''} of this conversation did not fit "
            f"{checkpoint or 'the model'}'s context window and {'were' if n > 1 else 'was'} left out of the request.*")


def shown(turn: dict[str, Any], gold: str | None = None, alias: dict[str, str] | None = None) -> str:
    """What a turn looks like in the chat: its text (or gold correction) and, when it did not end
    well, why. `alias` renames checkpoints in what limachat itself writes (error messages, notices),
    never in the conversation: a blind session shows A and B until it is closed."""
    def named(text: str) -> str:
        for name, shown_as in (alias or {}).items():
            text = text.replace(name, shown_as)
        return text

    text = inert(gold if gold is not None else turn["content"])
    dropped = (turn.get("params") or {}).get("dropped_exchanges")
    if dropped:
        text = f"{named(dropped_notice(dropped, turn.get('checkpoint')))}\n\n{text}"
    status = turn["status"]
    if status == "error":
        return f"{text}\n\n⚠️ **{inert(named(turn['error'] or 'failed'))}** Press retry (↻) to try again.".strip()
    if status == "stopped":
        return f"{text}\n\n*(stopped)*".strip()
    if status == "streaming" and not text:
        return "…"
    return text


@dataclass
class View:
    history: list[dict[str, str]] = field(default_factory=list)
    feedback: list[str | None] = field(default_factory=list)  # one per assistant message
    ids: list[str] = field(default_factory=list)  # the turn behind each message

    def turn_at(self, index: int | tuple | list) -> str:
        i = index[0] if isinstance(index, (tuple, list)) else index
        if not 0 <= i < len(self.ids):
            raise IndexError(f"no message {i} in this chat")
        return self.ids[i]

    def growing(self, reply, checkpoint: str, alias: dict[str, str] | None = None) -> View:
        """This view (a branch ending at a user turn) with `reply` (an answer.Reply) streaming after it."""
        turn = {"content": reply.text, "status": reply.status, "error": reply.error, "checkpoint": checkpoint,
                "params": {"dropped_exchanges": reply.dropped}}
        return View(self.history + [{"role": "assistant", "content": shown(turn, alias=alias)}],
                    self.feedback + [None], self.ids + [reply.turn_id])


def view(store: Store, leaf_id: str | None, annotator: str | None, alias: dict[str, str] | None = None) -> View:
    """The branch ending at `leaf_id` as the chat shows it to `annotator`."""
    if leaf_id is None:
        return View()
    turns = store.branch(leaf_id)
    labels = store.current_labels(turns[0]["session_id"], annotator) if annotator else {}
    gold = {r["turn_id"]: r["content"] for r in store.query(
        "select turn_id, content from edits where turn_id in (select value from json_each(?)) order by created, id",
        (json.dumps([t["id"] for t in turns]),))}
    out = View()
    for t in turns:
        out.history.append({"role": t["role"], "content": shown(t, gold.get(t["id"]), alias)})
        out.ids.append(t["id"])
        if t["role"] == "assistant":
            out.feedback.append(FEEDBACK.get(labels.get(t["id"])))
    return out


def latest_leaf(store: Store, session_id: str) -> str | None:
    """The newest turn of a session: where a resumed chat picks up."""
    rows = store.query("select id from turns where session_id = ? order by created desc, id desc limit 1", (session_id,))
    return rows[0]["id"] if rows else None


def label_of(option: str | bool | None, annotator: str | None) -> str | None:
    """The label a feedback click stands for (None: a click that unsets it, which changes nothing).
    A label needs an annotator."""
    label = LABEL_OF.get(option) if isinstance(option, str) else None
    if label is not None and not annotator:
        raise ValueError(NAME_FIRST)
    return label


NAME_FIRST = "Enter your name at the top of the page first: ratings and corrections are kept per annotator."
