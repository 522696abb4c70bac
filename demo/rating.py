"""The rating panel under a chat or a compare lane: Fail / Pass / Excellent for the focused reply (the
newest unless the annotator moved back), its label highlighted. The keys (`KEYS`, wired in the page's
script) press these buttons, so one key rates one reply. Plain functions: the focus is how many
replies back from the newest (0: the newest)."""

from __future__ import annotations

from limachat.demo.history import LABEL_OF, NAME_FIRST, View, inert

KEYS = {"1": "fail", "2": "pass", "3": "excellent"}

HELP = (
    "Keys: **1** fail, **2** pass, **3** excellent for the focused reply (then the focus moves to the other side) · "
    "**c** a reason for the label just given (Enter saves) · **↑ / ↓** earlier / later reply · **← / →** left / "
    "right side · **a / t / b** verdict on the exchange · **A / T / B** (with Shift) on the whole conversation · "
    "**n** next study prompt · **/** write a message (Enter sends, Esc leaves the box)"
)


def replies(v: View) -> list[int]:
    """The message index of each assistant reply, oldest first."""
    return [i for i, m in enumerate(v.history) if m["role"] == "assistant"]


def focused(v: View, back: int) -> int | None:
    """The message index of the focused reply (None before the first reply)."""
    shown = replies(v)
    if not shown:
        return None
    return shown[-1 - min(max(back, 0), len(shown) - 1)]


def move(v: View, back: int, step: int) -> int:
    """The focus after moving `step` replies later (+1) or earlier (-1), kept within the replies."""
    return min(max(back - step, 0), max(len(replies(v)) - 1, 0))


def label(v: View, back: int) -> str | None:
    """The annotator's current label of the focused reply."""
    index = focused(v, back)
    if index is None:
        return None
    return LABEL_OF.get(v.feedback[replies(v).index(index)])


def reason(v: View, back: int) -> str | None:
    """The annotator's reason for their label of the focused reply."""
    index = focused(v, back)
    return None if index is None or not v.reasons else v.reasons[replies(v).index(index)]


def caption(v: View, back: int, name: str = "") -> str:
    shown = replies(v)
    index = focused(v, back)
    if index is None:
        return f"{name}no reply to rate yet"
    n = shown.index(index) + 1
    mine, why = label(v, back), reason(v, back)
    said = f" · your label: **{mine}**" + (f" · reason: *{inert(why)}*" if why else "") if mine else " · not rated yet"
    return f"{name}reply {n} of {len(shown)}{said}"


def give_reason(store, v: View, back: int, text: str, annotator: str | None) -> None:
    """Key c: the annotator's one-line reason for their label of the focused reply."""
    if not annotator:
        raise ValueError(NAME_FIRST)
    index = focused(v, back)
    if index is None:
        raise ValueError("No reply to give a reason for yet.")
    store.set_reason(v.turn_at(index), annotator, text)
