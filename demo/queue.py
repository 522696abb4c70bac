"""Queue tab handlers: walk a rating queue (dialogues/queues.py) one reply at a time, its conversation
above it, with the same keys as everywhere: 1 / 2 / 3 label the reply and bring the next one, c gives
the label just given its reason. In a queue to adjudicate, the reviewer sees everyone's labels and
reasons, and their label is the final one.

`state = {"queue": name | None, "item": turn id | None, "last": turn id | None}` (`last`: the reply
the annotator labelled last, which key c gives a reason).
"""

from __future__ import annotations

from limachat.demo.answer import Deps
from limachat.demo.history import View, inert, view
from limachat.dialogues import queues
from limachat.dialogues.export import Filters
from limachat.dialogues.team import adjudicator_name


def blank() -> dict:
    return {"queue": None, "item": None, "last": None}


def names(deps: Deps) -> list[str]:
    return [q["name"] for q in deps.store.queues()]


def create(
    deps: Deps, name: str, source: str, study: str | None, needs, adjudicate: bool, adjudicators: str | None
) -> str:
    if needs not in (None, "") and float(needs) != int(needs):
        raise ValueError(f"needs: a whole number, not {needs!r}")
    q = queues.create(
        deps.store,
        name,
        source,
        filters=Filters(study=study or None),
        study=study or None,
        needs=int(needs) if needs not in (None, "", 0) else None,
        purpose="adjudicate" if adjudicate else "rate",
        adjudicators=(adjudicators or "").split(","),
    )
    return "Created " + queues.status_line(q, queues.status(deps.store, q))


def rater_of(queue: dict, annotator: str) -> str:
    """Whose rating a label in this queue is: the annotator's, or in a queue to adjudicate their final one."""
    return adjudicator_name(annotator) if queue["purpose"] == "adjudicate" else annotator


def show(deps: Deps, state: dict, annotator: str | None) -> tuple[dict, View, str, str, str]:
    """(state, the item's conversation down to the reply, the caption, what others said: shown only to an
    adjudicator, the queue's progress). The next reply the annotator may work on, or an empty view when
    none is left."""
    if not state["queue"]:
        return state, View(), "Pick a queue.", "", ""
    q = deps.store.queue(state["queue"])
    who = queues.may_work(q, annotator)
    item = queues.next_item(deps.store, q, who)
    s = queues.status(deps.store, q)
    done = queues.status_line(q, s)
    if item is None:
        return {**state, "item": None}, View(), "Nothing left for you in this queue.", "", done
    v = view(deps.store, item.turn_id, rater_of(q, who))
    caption = f"reply {item.place} of {item.total} in queue **{q['name']}** ({q['purpose']}): label it with 1 / 2 / 3"
    others = ""
    if q["purpose"] == "adjudicate":
        others = "People's labels: " + "; ".join(
            f"**{w}**: {lab}" + (f" ({inert(r)})" if r else "") for w, (lab, r) in sorted(item.labels.items())
        )
    return {**state, "item": item.turn_id}, v, caption, others, done


def rate(deps: Deps, state: dict, label: str, annotator: str | None) -> dict:
    """Label the shown reply (the final label, in a queue to adjudicate); the next one comes with `show`."""
    if not state.get("item"):
        raise ValueError("No reply to label here: pick a queue (or this one is done for you).")
    q = deps.store.queue(state["queue"])
    who = queues.may_work(q, annotator)
    if q["purpose"] == "adjudicate":
        deps.store.adjudicate(state["item"], who, label)
    else:
        deps.store.rate(state["item"], who, label)
    return {**state, "last": state["item"]}


def reason(deps: Deps, state: dict, text: str, annotator: str | None) -> str:
    """Key c: the reason for the label just given."""
    if not state.get("last"):
        raise ValueError("Label a reply first: a reason says why it got its label.")
    q = deps.store.queue(state["queue"])
    deps.store.set_reason(state["last"], rater_of(q, queues.may_work(q, annotator)), text)
    return f"Reason saved for the reply you labelled last: *{inert(' '.join(text.split()))}*"
