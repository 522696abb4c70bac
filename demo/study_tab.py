"""The Study tab: define a study, watch every annotator's progress, read and download its report. The
study itself lives in dialogues/study.py and its numbers in dialogues/study_report.py; this only wires."""

from __future__ import annotations

import gradio as gr

from limachat.demo.answer import Deps
from limachat.demo.ui import _user
from limachat.dialogues import study, study_report


def create(
    deps: Deps,
    name: str,
    checkpoints: list[str],
    prompts: str | None,
    conversations,
    turns,
    blind: bool,
    annotators: str,
    seed,
    raters=None,
    adjudicators: str = "",
    history: str = "own",
    rule: str = "verdict",
    bundled_set: str | None = None,
) -> str:
    def whole(value, key):
        if value is None or float(value) != int(value):
            raise ValueError(f"{key}: a whole number, not {value!r}")
        return int(value)

    st = study.create(
        deps.store,
        name,
        list(checkpoints or []),
        prompts=prompts or bundled_set or None,
        conversations=whole(conversations, "conversations"),
        turns=whole(turns, "turns"),
        blind=bool(blind),
        annotators=(annotators or "").split(","),
        seed=whole(seed, "seed"),
        known=deps.names,
        raters_per_conversation=whole(raters, "raters per conversation") if raters else None,
        adjudicators=(adjudicators or "").split(","),
        history=history or "own",
        history_rule=rule or "verdict",
    )
    shared = (
        f" Each conversation is rated by {st['raters_per_conversation']}: its driver, and the others from the "
        f"Queue tab (queue **{study.study_queue(st['name'])}**)."
        if st["raters_per_conversation"]
        else ""
    )
    return (
        f"Created study **{st['name']}**: {', '.join(st['checkpoints'])}, {st['conversations']} conversations per "
        f"checkpoint of {st['turns']} turns"
        + (" " if st["history"] == "both" else ", ")
        + study.said(st["history"], st["history_rule"])
        + f". In the Compare tab, pick it and press **n** for its first prompt.{shared}"
    )


def board(deps: Deps, name: str | None) -> dict:
    if not name:
        return {
            "data": [],
            "headers": ["annotator", "checkpoint", "started", "conversations done", "replies rated", "left"],
        }
    rows = study.progress(deps.store, deps.store.study(name))
    headers = (
        list(rows[0]) if rows else ["annotator", "checkpoint", "started", "conversations done", "replies rated", "left"]
    )
    return {"data": [list(r.values()) for r in rows], "headers": headers}


def report(deps: Deps, name: str | None) -> tuple[str | None, str | None, str, str]:
    """(PNG path, HTML path, Markdown, how many more conversations) of the study's report, written under
    <home>/reports/."""
    if not name:
        return None, None, "Pick a study.", ""
    reports = study_report.document(deps.store, name)
    out = deps.settings.layout.reports
    out.mkdir(parents=True, exist_ok=True)
    png, page = out / f"study-{name}.png", out / f"study-{name}.html"
    study_report.write(reports, html_path=page, png=png)
    needed = "  \n".join(n.line() for n in reports[0].needed)
    return str(png), str(page), study_report.markdown(reports), needed


def study_tab(deps: Deps, names: list[str], tab) -> None:
    gr.Markdown(
        "A study runs LIMA's section 6 as a plan: so many conversations per checkpoint on a fixed prompt set, "
        "each carried to so many turns and every reply labelled. Annotators walk it in the Compare tab "
        "(pick the study, press **n**); the report gives every share a 95% interval over conversations."
    )
    with gr.Accordion("New study", open=False):
        with gr.Row():
            name = gr.Textbox(label="Name", max_lines=1, elem_id="study-name")
            cks = gr.Dropdown(
                names, value=names[:2], multiselect=True, label="Checkpoints (two or more)", elem_id="study-checkpoints"
            )
            annotators = gr.Textbox(
                label="Annotators (comma-separated; blank: anyone)", max_lines=1, elem_id="study-annotators"
            )
        with gr.Row():
            conversations = gr.Number(
                10,
                precision=0,
                minimum=1,
                label="Conversations per checkpoint (LIMA: 10)",
                elem_id="study-conversations",
            )
            turns = gr.Number(3, precision=0, minimum=1, label="Turns per conversation", elem_id="study-turns")
            blind = gr.Checkbox(True, label="Blind")
            seed = gr.Number(0, precision=0, label="Seed (order and sides)")
            raters = gr.Number(
                None, precision=0, label="Raters per conversation (blank: everyone walks all)", elem_id="study-raters"
            )
            adjudicators = gr.Textbox(label="Adjudicators (comma-separated)", max_lines=1, elem_id="study-adjudicators")
        with gr.Row():
            history = gr.Radio(
                list(study.HISTORIES),
                value="own",
                label="History (own: LIMA's; both: each conversation twice)",
                elem_id="study-history",
            )
            rule = gr.Radio(
                list(study.RULES),
                value="verdict",
                label="Shared history continues from",
                info="verdict: the preferred reply (A's on a tie); reference: the prompt set's reference reply",
                elem_id="study-rule",
            )
            bundled_set = gr.Radio(
                list(study.BUNDLED_SETS),
                value=study.BUNDLED_SET,
                label="Bundled prompt set",
                info="bundled: 10 opening prompts; scripted: 12 conversations of 3 scripted turns",
                elem_id="study-set",
            )
            prompts = gr.File(label="Or a prompt set file", file_types=[".jsonl", ".txt"], height=90)
        create_btn = gr.Button("Create study", variant="primary", elem_id="study-create")
        created = gr.Markdown(elem_id="study-created")
    with gr.Row(equal_height=True):
        pick = gr.Dropdown(
            [s["name"] for s in deps.store.studies()], value=None, label="Study", elem_id="study-pick", scale=3
        )
        refresh = gr.Button("Refresh", scale=0, elem_id="study-refresh")
    progress = gr.Dataframe(
        board(deps, None), label="Progress per annotator and checkpoint", interactive=False, elem_id="study-board"
    )
    needed = gr.Markdown(elem_id="study-needed")
    chart = gr.Image(
        label="Label shares with 95% intervals, and the leaderboard",
        type="filepath",
        interactive=False,
        elem_id="study-chart",
    )
    page = gr.File(
        label="The report as one page to share (HTML, charts embedded)", interactive=False, elem_id="study-html"
    )
    text = gr.Markdown(elem_id="study-report")

    def studies():
        return gr.update(choices=[s["name"] for s in deps.store.studies()])

    def on_create(n, c, p, conv, t, b, a, s, k, adj, h, r, bs):
        message = _user(lambda: create(deps, n, c, p, conv, t, b, a, s, k, adj, h, r, bs))
        return message, gr.update(choices=[x["name"] for x in deps.store.studies()], value=n.strip())

    def on_show(n):
        png, html, md, more = _user(lambda: report(deps, n))
        return _user(lambda: board(deps, n)), more, png, html, md

    shown = [progress, needed, chart, page, text]
    create_btn.click(
        on_create,
        [
            name,
            cks,
            prompts,
            conversations,
            turns,
            blind,
            annotators,
            seed,
            raters,
            adjudicators,
            history,
            rule,
            bundled_set,
        ],
        [created, pick],
    ).then(on_show, pick, shown)
    pick.select(on_show, pick, shown)
    refresh.click(on_show, pick, shown)
    tab.select(studies, None, pick).then(on_show, pick, shown)
