"""The Collect and Report tabs: filters, export, curation jobs (judge, select, revise, train), rubrics,
teacher revisions to review, and Figure 7. Handlers live in collect.py."""

from __future__ import annotations

import gradio as gr

from limachat.demo import collect
from limachat.demo.answer import Deps
from limachat.demo.ui import _user
from limachat.dialogues.export import Filters
from limachat.dialogues.store import LABELS, MODES
from limachat.dialogues.values import GOLD_SOURCES, RATERS


def collect_tab(deps: Deps, names, pickers: list, annotator, who, tab) -> None:
    gr.Markdown(
        "Rated chains become training data: pick the filters, see what passes, download it, "
        "or train a new dialogue checkpoint from the bundled set plus these chains."
    )
    with gr.Row():
        min_label = gr.Dropdown([collect.ANY, *LABELS], value="pass", label="Min label (every reply)")
        cut = gr.Checkbox(False, label="Cut at first fail")
        gold = gr.Checkbox(True, label="Use gold corrections")
        ck = gr.Dropdown([collect.ANY, *names], value=collect.ANY, label="Checkpoint")
        person = gr.Textbox(label="Annotator (blank: anyone)", max_lines=1)
        mode = gr.Dropdown([collect.ANY, *MODES], value=collect.ANY, label="Mode")
    with gr.Row():
        raters = gr.Dropdown(list(RATERS), value=Filters.raters, label="Whose labels count", elem_id="collect-raters")
        min_score = gr.Number(0, minimum=0, maximum=5, step=0.5, label="Min judge score (0: any; AlpaGasus kept 4.5)")
        selection = gr.Dropdown([collect.ANY], value=collect.ANY, label="Selection", elem_id="collect-selection")
        gold_from = gr.Dropdown(list(GOLD_SOURCES), value=Filters.gold_from, label="Gold corrections by")
    widgets = [min_label, cut, gold, ck, person, mode, raters, min_score, selection, gold_from]
    counted = gr.Markdown(elem_id="collect-count")
    with gr.Row():
        fmt = gr.Radio(
            ["lima", "messages", "preference", "kto"],
            value="messages",
            label="Format",
            info="lima, messages: chains for SFT; preference: pairs for DPO; kto: good or bad replies",
            elem_id="collect-format",
        )
        pass_good = gr.Checkbox(False, label="Pass is good (kto)", elem_id="collect-pass-good")
        dedupe = gr.Checkbox(False, label="One row per pair (dedupe)")
        export = gr.Button("Export JSONL", elem_id="collect-export")
        train = gr.Button("Train dialogue checkpoint from these", variant="primary")
    with gr.Row():
        license_ = gr.Textbox(label="Dataset license (Hub id, e.g. cc-by-4.0)", max_lines=1, scale=2)
        hub = gr.Button("Write Hub dataset folder", elem_id="collect-hub", scale=1)
    result = gr.Markdown(elem_id="collect-result")
    download = gr.File(label="Download", interactive=False, elem_id="collect-file")
    gr.Markdown(
        "### Curate\nMachines beside the people, on the chains the filters above pick (checkpoint, annotator, "
        "mode): an LLM judge labels or scores replies (AlpaGasus, MT-Bench), k-center picks a diverse subset "
        "(LTD), a teacher revises replies against per-category rubrics (CITING), and an ablation trains a "
        "checkpoint without each group of these chains to measure what each bought. Each runs in the background."
    )
    with gr.Row():
        with gr.Column():
            judge_mode = gr.Radio(["label", "score", "pairwise"], value="label", label="Judge")
            judge_limit = gr.Number(20, minimum=0, precision=0, label="At most (0: all)")
            judge = gr.Button("Judge", elem_id="collect-judge")
        with gr.Column():
            sel_name = gr.Textbox(label="Selection name", max_lines=1, elem_id="collect-select-name")
            sel_size = gr.Number(20, minimum=1, precision=0, label="Chains to choose")
            per_cluster = gr.Checkbox(False, label="Per cluster")
            select = gr.Button("Select", elem_id="collect-select")
        with gr.Column():
            rev_labels = gr.CheckboxGroup(list(LABELS), value=["fail", "pass"], label="Revise replies labelled")
            rev_limit = gr.Number(10, minimum=0, precision=0, label="At most (0: all)", elem_id="collect-revise-limit")
            revise = gr.Button("Revise", elem_id="collect-revise")
        with gr.Column():
            abl_name = gr.Textbox(label="Ablation name", max_lines=1, elem_id="collect-ablate-name")
            abl_by = gr.Dropdown(
                ["annotator", "kind", "source", "selection"], value="annotator", label="Leave out each", scale=1
            )
            abl_design = gr.Dropdown(
                ["leave-one-out", "quantity", "quality", "diversity"], value="leave-one-out", label="Design"
            )
            ablate = gr.Button("Ablate", elem_id="collect-ablate")
    progress = gr.Markdown(elem_id="collect-jobs")
    serve = gr.Button("Serve the trained checkpoint", visible=False)
    timer = gr.Timer(1.0, active=False)
    with gr.Accordion("Rubrics (written by the teacher; yours to edit)", open=False):
        with gr.Row():
            category = gr.Dropdown([], label="Category", elem_id="rubric-category", scale=1)
            rubric = gr.Textbox(label="Rubric", lines=6, scale=3, elem_id="rubric-text")
        save_rubric = gr.Button("Save as a new version", scale=0)
    with gr.Accordion("Teacher revisions to review", open=False):
        pending = gr.Dropdown([], label="Revision", elem_id="revision-pick")
        with gr.Row():
            before = gr.Markdown(elem_id="revision-before")
            after = gr.Markdown(elem_id="revision-after")
        with gr.Row():
            accept = gr.Button("Accept (becomes your gold correction)", variant="primary", elem_id="revision-accept")
            reject = gr.Button("Reject", elem_id="revision-reject")
    reviewed = gr.Markdown(elem_id="revision-status")

    def on_count(good, *values):
        return _user(lambda: collect.count(deps, collect.filters(*values), good))

    def on_export(fmt_, good, once, *values):
        path, message = _user(lambda: collect.export_file(deps, collect.filters(*values), fmt_, good, once))
        return str(path), message

    def on_hub(fmt_, good, once, license_text, *values):
        _, message = _user(lambda: collect.hub_folder(deps, collect.filters(*values), fmt_, good, once, license_text))
        return message

    def started(job):
        return collect.job_status(deps), gr.Timer(active=True), gr.update(visible=False)

    def on_train(*values):
        return started(_user(lambda: collect.start_training(deps, collect.filters(*values))))

    def on_judge(m, limit, *values):
        return started(_user(lambda: collect.start_judge(deps, m, collect.filters(*values), limit)))

    def on_select(name, size, pc, *values):
        return started(_user(lambda: collect.start_select(deps, collect.filters(*values), name, size, pc)))

    def on_ablate(name, by, design, *values):
        return started(_user(lambda: collect.start_ablate(deps, collect.filters(*values), name, by, design)))

    def on_revise(labels, limit, *values):
        return started(_user(lambda: collect.start_revise(deps, collect.filters(*values), labels, limit)))

    def on_tick():  # while jobs run, and once more after: what they made shows up in the pickers
        train_job = deps.jobs.get("train")
        return (
            collect.job_status(deps),
            gr.Timer(active=collect.running(deps)),
            gr.update(visible=train_job is not None and train_job.state == "done"),
            gr.update(choices=[collect.ANY, *collect.selections(deps)]),
            gr.update(choices=sorted(deps.store.rubrics())),
            gr.update(choices=collect.pending_revisions(deps)),
        )

    def on_serve():
        message = _user(lambda: collect.serve_trained(deps, deps.jobs["train"]))
        choices = gr.update(choices=deps.names)
        return (message, *([choices] * len(pickers)), gr.update(choices=[collect.ANY, *deps.names]))

    def on_open(*values):
        cats = sorted(deps.store.rubrics())
        return (
            on_count(False, *values),
            gr.update(choices=[collect.ANY, *collect.selections(deps)]),
            gr.update(choices=cats),
            gr.update(choices=collect.pending_revisions(deps), value=None),
        )

    def on_save_rubric(cat, text, name, request: gr.Request):
        return _user(lambda: collect.save_rubric(deps, cat, text, who(name, request)))

    def reviewer(accepting):
        def on_review(edit_id, name, request: gr.Request):
            message = _user(lambda: collect.review(deps, edit_id, who(name, request), accepting))
            return message, gr.update(choices=collect.pending_revisions(deps), value=None), "", ""

        return on_review

    for w in [pass_good, *widgets]:
        w.change(on_count, [pass_good, *widgets], counted)
    export.click(on_export, [fmt, pass_good, dedupe, *widgets], [download, result])
    hub.click(on_hub, [fmt, pass_good, dedupe, license_, *widgets], result)
    jobs_out = [progress, timer, serve]
    train.click(on_train, widgets, jobs_out)
    judge.click(on_judge, [judge_mode, judge_limit, *widgets], jobs_out)
    select.click(on_select, [sel_name, sel_size, per_cluster, *widgets], jobs_out)
    revise.click(on_revise, [rev_labels, rev_limit, *widgets], jobs_out)
    ablate.click(on_ablate, [abl_name, abl_by, abl_design, *widgets], jobs_out)
    timer.tick(on_tick, None, [progress, timer, serve, selection, category, pending])
    serve.click(on_serve, None, [progress, *pickers, ck])
    tab.select(on_open, widgets, [counted, selection, category, pending])
    category.select(lambda c: collect.rubric_text(deps, c), category, rubric)
    save_rubric.click(on_save_rubric, [category, rubric, annotator], reviewed)
    pending.select(lambda e: collect.revision(deps, e), pending, [before, after])
    accept.click(reviewer(True), [pending, annotator], [reviewed, pending, before, after])
    reject.click(reviewer(False), [pending, annotator], [reviewed, pending, before, after])


def report_tab(deps: Deps, tab) -> None:
    refresh = gr.Button("Refresh", scale=0)
    chart = gr.Image(
        label="Figure 7: label shares per checkpoint, and excellent share by turn",
        type="filepath",
        interactive=False,
        elem_id="report-chart",
    )
    tables = gr.Markdown(elem_id="report-tables")

    def on_report():
        png, text = collect.report(deps)
        return (str(png) if png else None), text

    refresh.click(on_report, None, [chart, tables])
    tab.select(on_report, None, [chart, tables])
