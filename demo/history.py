"""The one converter between stored turns and Gradio 6 chat history.

A branch of the turn tree (root to leaf) becomes a list of `{"role", "content"}` messages for
`gr.Chatbot`, the annotator's labels for its assistant messages (`feedback_value`), and the turn
id behind each message, so an event on message `i` (a rating, an edit, a retry) finds its turn.
"""

from __future__ import annotations

import html
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


def dropped_notice(n: int, name: str | None) -> str:
    return (
        f"*Note: the {n} oldest exchange{'s' if n > 1 else ''} of this conversation did not fit "
        f"{name or 'the model'}'s context window and {'were' if n > 1 else 'was'} left out of the request.*"
    )


def edited(original: str, editor: str) -> str:
    """How a reply with a gold correction ends: who corrected it, and the original one click away."""
    return (
        f'\n\n<details class="gold"><summary>✏️ edited by {html.escape(editor)}: show the original reply</summary>\n\n'
        f"{inert(original)}\n\n</details>"
    )


def listed(session: dict[str, Any], what: str, width: int = 60) -> str:
    """A session as a resume list shows it: when, `what`, and its first prompt on one line, cut to `width`."""
    first = " ".join((session["first_prompt"] or "(empty)").split())
    first = first if len(first) <= width else first[: width - 3] + "..."
    return f"{session['created'][:16].replace('T', ' ')} · {what} · {first}"


def unmark(text: str) -> str:
    """A corrected reply's text as the user edits it again: without the "edited by" note `edited` added."""
    cut = text.find('\n\n<details class="gold">')
    return text if cut < 0 else text[:cut]


def shown(turn: dict[str, Any], gold: str | None = None, blind_as: str | None = None, editor: str | None = None) -> str:
    """What a turn looks like in the chat: its text (or gold correction) and, when it did not end
    well, why. What limachat itself writes names the checkpoint from the turn's fields; in a blind
    session (`blind_as`: "A" or "B") it uses that name instead and leaves out the error's detail
    (which may name the model and endpoint), so nothing on the page tells the sides apart."""
    name = blind_as or turn.get("checkpoint") or "the model"
    text = inert(gold if gold is not None else turn["content"])
    dropped = (turn.get("params") or {}).get("dropped_exchanges")
    if dropped:
        text = f"{dropped_notice(dropped, name)}\n\n{text}"
    status = turn["status"]
    if status == "error":
        detail = "" if blind_as or not turn.get("error_detail") else f" ({inert(turn['error_detail'])})"
        return f"{text}\n\n⚠️ **{name}: {inert(turn['error'] or 'the request failed')}.**{detail} Press retry (↻) to try again.".strip()
    if status == "stopped":
        return f"{text}\n\n*(stopped)*".strip()
    if status == "streaming" and not text:
        return "…"
    if gold is not None and editor:
        text += edited(turn["content"], editor)
    return text


@dataclass
class View:
    history: list[dict[str, str]] = field(default_factory=list)
    feedback: list[str | None] = field(default_factory=list)  # one per assistant message
    ids: list[str] = field(default_factory=list)  # the turn behind each message
    reasons: list[str | None] = field(default_factory=list)  # one per assistant message: the annotator's reason

    def turn_at(self, index: int | tuple | list) -> str:
        i = index[0] if isinstance(index, (tuple, list)) else index
        if not 0 <= i < len(self.ids):
            raise IndexError(f"no message {i} in this chat")
        return self.ids[i]

    def growing(self, reply, checkpoint: str, blind_as: str | None = None) -> View:
        """This view (a branch ending at a user turn) with `reply` (an answer.Reply) streaming after it."""
        turn = {
            "content": reply.text,
            "status": reply.status,
            "error": reply.error,
            "error_detail": reply.detail,
            "checkpoint": checkpoint,
            "params": {"dropped_exchanges": reply.dropped},
        }
        return View(
            self.history + [{"role": "assistant", "content": shown(turn, blind_as=blind_as)}],
            self.feedback + [None],
            self.ids + [reply.turn_id],
            self.reasons + [None],
        )


def view(store: Store, leaf_id: str | None, annotator: str | None, blind_as: str | None = None) -> View:
    """The branch ending at `leaf_id` as the chat shows it to `annotator`."""
    if leaf_id is None:
        return View()
    turns = store.branch(leaf_id)
    labels = store.current_labels(turns[0]["session_id"], annotator) if annotator else {}
    reasons = store.current_reasons(turns[0]["session_id"], annotator) if annotator else {}
    gold = store.gold_editors([t["id"] for t in turns])
    out = View()
    for t in turns:
        text, editor = gold.get(t["id"], (None, None))
        out.history.append({"role": t["role"], "content": shown(t, text, blind_as, editor)})
        out.ids.append(t["id"])
        if t["role"] == "assistant":
            out.feedback.append(FEEDBACK.get(labels.get(t["id"])))
            out.reasons.append(reasons.get(t["id"]))
    return out


def label_of(option: str | bool | None, annotator: str | None) -> str | None:
    """The label a feedback click stands for (None: a click that unsets it, which changes nothing).
    A label needs an annotator."""
    label = LABEL_OF.get(option) if isinstance(option, str) else None
    if label is not None and not annotator:
        raise ValueError(NAME_FIRST)
    return label


NAME_FIRST = "Enter your name at the top of the page first: ratings and corrections are kept per annotator."


MAX_MESSAGE = 100_000  # characters; far beyond any context window limachat serves (2,048 tokens by default)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def check_message(text: str) -> None:
    """A message the app refuses says why in one line: too long, or holding a control character
    (right-to-left text, emoji and every other printable script pass as they are)."""
    if len(text) > MAX_MESSAGE:
        raise ValueError(f"This message has {len(text):,} characters; the limit is {MAX_MESSAGE:,}. Shorten it.")
    bad = _CONTROL.search(text)
    if bad:
        raise ValueError(
            f"This message holds the control character U+{ord(bad.group()):04X} at character {bad.start() + 1}; "
            "remove it and send again."
        )


def judge_line(store: Store, v: View, side: str = "") -> str:
    """The LLM judges' labels of a view's replies (the page shows them only when asked, after people
    have labelled: a judge's label seen first would sway them)."""
    replies = [tid for tid, m in zip(v.ids, v.history) if m["role"] == "assistant"]
    labels = store.judge_labels(replies)
    found = [f"reply {n}: **{labels[t][0]}**" for n, t in enumerate(replies, 1) if t in labels]
    judges = sorted({labels[t][1] for t in replies if t in labels})
    if not found:
        return f"{side}no judge has labelled these replies (`limachat judge label`, or Judge in the Collect tab)."
    return f"{side}" + ", ".join(found) + f" ({', '.join(judges)})"
