"""`limachat ablate`: the groups and designs built from an export's provenance, the effects and their
intervals against hand counts, and, on the tiny model's server, synthetic data with a known effect
(benchmarks/bench_ablate.py) ranked the right way round by held-out loss: one annotator's chains teach
the habit the held-out chains answer in, another's add noise."""

from __future__ import annotations

import json
import sys
import time

import pytest
from click.testing import CliRunner
from conftest import REPO

from limachat import ablate
from limachat.cli import main
from limachat.dialogues.formats import FormatError

sys.path.insert(0, str(REPO / "benchmarks"))
from bench_ablate import TOPICS, fields, judge_standin, line, synthetic

E, P, F = "excellent", "pass", "fail"


def test_groups_by_annotator_kind_and_source_come_from_the_provenance(tmp_path):
    path = tmp_path / "export.jsonl"
    path.write_text(
        line("q1", "a", ["ana"])
        + line("q2", "b", ["ana", "judge/base/label-v1"])
        + line("q3", "c", ["bo"], edited_by=["teacher/base/revise-v1"])
        + line("q4", "d", ["bo"], edited_by=["bo"])
        + line("q5", "e", [])
    )
    by = {k: [sorted(c.groups) for c in ablate.read_export(path, k)] for k in ("annotator", "kind", "source")}
    assert by["annotator"] == [["ana"], ["ana", "judge/base/label-v1"], ["bo"], ["bo"], ["(unrated)"]]
    assert by["kind"] == [["human"], ["human", "judge"], ["human"], ["human"], ["(unrated)"]]
    assert by["source"] == [
        ["people-labelled chains"],
        ["judge-labelled chains", "people-labelled chains"],
        ["people-labelled chains", "teacher revisions"],
        ["gold edits", "people-labelled chains"],
        ["unrated chains"],
    ]
    path.write_text(line("q1", "a", ["ana"]) + '{"prompt": [], "chosen": [], "rejected": []}\n')
    with pytest.raises(FormatError, match=rf"^{path}:2: not a training chain"):
        ablate.read_export(path, "annotator")


def test_leave_one_out_and_lima_s_three_designs(tmp_path):
    path = tmp_path / "export.jsonl"
    rows = [line(f"q{i}", "r", [who], labels=[lab]) for i, (who, lab) in
            enumerate([("ana", P)] * 8 + [("bo", F)] * 4 + [("cy", E)] * 4)]  # fmt: skip
    path.write_text("".join(rows))
    chains = ablate.read_export(path, "annotator")
    loo = ablate.variants(chains)
    assert [(v.name, len(v.chains), v.group) for v in loo] == [
        ("all", 16, None),
        ("without-ana", 8, "ana"),
        ("without-bo", 12, "bo"),
        ("without-cy", 12, "cy"),
    ]
    assert [len(v.chains) for v in ablate.variants(chains, "quantity")] == [4, 8, 16]
    one, two = ablate.variants(chains, "quantity", seed=0)[:2]
    assert set(one.chains) <= set(two.chains)  # 2x holds 1x: the same source, more of it
    filtered, unfiltered = ablate.variants(chains, "quality")
    assert len(filtered.chains) == len(unfiltered.chains) == 12 and all(chains[i].label != F for i in filtered.chains)
    alone, mixed = ablate.variants(chains, "diversity")
    assert (alone.name, len(alone.chains), len(mixed.chains)) == ("one-ana", 8, 8)
    assert len({min(chains[i].groups) for i in mixed.chains}) > 1
    assert ablate.variants(chains, "quality", seed=1) != ablate.variants(chains, "quality", seed=2)
    assert ablate.variants(chains, "quality", seed=1) == ablate.variants(chains, "quality", seed=1)
    with pytest.raises(ValueError, match="leave-one-out needs two groups or more"):
        ablate.variants(chains[:8])


def test_effects_against_hand_counts_and_the_marks_on_what_no_interval_can_tell():
    # held-out chains (NLL sum, tokens): without the group the loss rises from 1.0 to 1.5 on every chain
    base = [(10.0, 10), (20.0, 20), (5.0, 5)]
    worse = [(15.0, 10), (30.0, 20), (7.5, 5)]
    d = ablate.loss_difference(worse, base)
    assert (d.value, d.low, d.high) == pytest.approx((0.5, 0.5, 0.5))  # the same rise on every chain: no spread
    measured = [
        ablate.Measured("all", None, 20, [[E, E, P], [E, P, P], [E, E, E]], base),
        ablate.Measured("without-gina", "gina", 10, [[P, F, P], [F, P, P], [P, P, F]], worse),
        ablate.Measured("without-nico", "nico", 10, [[E, E, P], [E, P, P], [E, E, E]], base),
    ]
    gina, nico = ablate.effects(measured)
    assert gina.name == "gina" and gina.excellent.value == pytest.approx(6 / 9)  # 6 of 9 excellent, then none
    assert gina.fail.value == pytest.approx(-3 / 9) and gina.loss.value == pytest.approx(0.5)
    assert nico.excellent.value == 0 and nico.unclear() == ["excellent", "fail", "loss"]
    assert "excellent" not in gina.unclear()
    text = ablate.markdown("t", "leave-one-out", "annotator", measured, [nico, gina], "judge/x/label-v1", 8)
    rows = [r for r in text.splitlines() if r.startswith("| gina") or r.startswith("| nico")]
    assert rows[0].startswith("| gina | +66.7") and rows[1].startswith(
        "| nico | +0.0 [-44.4, +44.4] ·"
    )  # ranked by loss
    lima = ablate.markdown("q", "quantity", "annotator", measured[:2], ablate.effects(measured[:2]), "j", 8)
    assert "LIMA: 2,000 to 32,000 examples of one source" in lima


def test_bad_ablate_input_is_one_line(clean_env):
    bad = clean_env / "x.jsonl"
    bad.write_text("{not json\n")
    result = CliRunner().invoke(main, ["--home", "h", "ablate", str(bad), "--name", "n"])
    assert result.exit_code == 1 and f"{bad}:1:" in result.output and "Traceback" not in result.output
    one = clean_env / "one.jsonl"
    one.write_text(line("q", "r", ["ana"]))
    result = CliRunner().invoke(main, ["--home", "h", "ablate", str(one), "--name", "n"])
    assert result.exit_code == 1 and "leave-one-out needs two groups or more" in result.output


# -- on the tiny model's server ------------------------------------------------------------------------------


@pytest.mark.model
def test_ablate_ranks_a_helpful_group_above_a_noisy_one_by_held_out_loss(vllm_server, tmp_path):
    """The whole loop on a running server, one epoch a variant: train a variant per group left out, serve,
    replay, judge, estimate, rank; then resume with nothing redone. On the tiny model gina's chains lower
    the held-out loss (which answers in her habit) and nico's word salad raises it, so the ablation must
    rank gina first. A random model learns no habit in an epoch, so every reply is judged `pass` here; the
    judge's side of the ranking, on the bundled model, is `make bench`'s "Ablation" (benchmarks/bench_ablate.py)."""
    import httpx
    from conftest import free_port, models

    from limachat.dialogues.store import Store

    server = vllm_server
    export, held = synthetic(tmp_path, TOPICS[:8])  # 48 chains: what the loss needs, at half the training
    port = free_port()
    standin = judge_standin(port)
    home = tmp_path / "home"
    settings = server.settings(home, **fields(port))
    store = Store(home / "limachat.db")
    try:
        report = ablate.run(store, settings, export, name="syn", heldout=held, conversations=4, epochs=1)
        figures = json.loads((home / "reports" / "ablate-syn.json").read_text())
        effect = {e["name"]: e for e in figures["effects"]}
        print("\n" + report)
        assert set(effect) == {"gina", "nico"}
        assert effect["gina"]["loss"]["value"] > 0 > effect["nico"]["loss"]["value"]  # gina's chains lowered it
        assert effect["gina"]["loss"]["low"] > 0, "no interval can tell gina's effect on the loss from zero"
        assert report.index("| gina |") < report.index("| nico |")  # ranked
        assert {"syn-all", "syn-without-gina", "syn-without-nico"} <= set(models(server.url, server.headers))
        replies = [
            t
            for s in store.tagged_sessions("ablation", "syn")
            for t in store.turns(s["id"])
            if t["role"] == "assistant"
        ]
        assert len(replies) == 3 * 4 * 3  # 3 variants x 4 scripted conversations x 3 turns
        assert all(r["content"] for r in replies)
        labels = [label for v in figures["variants"] for conv in v["conversations"] for label in conv]
        assert labels == ["pass"] * len(replies), "each reply judged once, and a random reply is `pass` by rule"
        # resumable: a second run trains nothing, replays nothing, judges nothing new, and says the same
        started = time.monotonic()
        again = ablate.run(store, settings, export, name="syn", heldout=held, conversations=4, epochs=1)
        assert again == report and time.monotonic() - started < 120
        assert len([s for s in store.tagged_sessions("ablation", "syn")]) == 12
    finally:
        standin.should_exit = True
        for n in ("syn-all", "syn-without-gina", "syn-without-nico"):
            httpx.post(server.url + "/unload_lora_adapter", headers=server.headers, json={"lora_name": n}, timeout=60)


def test_the_collect_tab_s_ablate_job_exports_the_chains_and_stops_in_one_line_without_a_server(clean_env):
    """The Collect tab's Ablate: the filtered chains exported under <home>/jobs/, `limachat ablate` started
    as a job; with no model server running it stops before any training, and the page shows its one line."""
    from conftest import free_port

    from limachat.demo import collect
    from limachat.demo.answer import Deps
    from limachat.dialogues.export import Filters
    from limachat.dialogues.store import Store
    from limachat.settings import Settings

    settings = Settings(home=clean_env / "h")
    settings.server.port = free_port()  # nothing listens there
    store = Store(clean_env / "h" / "limachat.db")
    deps = Deps(store, {}, settings)
    with pytest.raises(ValueError, match="Give the ablation a name"):
        collect.start_ablate(deps, Filters(), " ", "annotator", "leave-one-out")
    with pytest.raises(ValueError, match="No chains pass these filters"):
        collect.start_ablate(deps, Filters(), "t", "annotator", "leave-one-out")
    sid = store.start_session("chat", annotator="ana")
    user = store.add_user_turn(sid, "Hi?")
    reply = store.begin_assistant_turn(sid, user, checkpoint="dialogue")
    store.finish_assistant_turn(reply, "Hello.")
    store.rate(reply, "ana", "pass")
    job = collect.start_ablate(deps, Filters(), "t", "annotator", "leave-one-out")
    assert (settings.layout.jobs / "ablate-t.jsonl").read_text().count("\n") == 1
    job.proc.wait(timeout=120)
    assert job.state == "failed"
    assert job.error() == "Error: leave-one-out needs two groups or more; this export has 1: ['ana']"
    other = store.start_session("chat", annotator="bo")
    second = store.begin_assistant_turn(other, store.add_user_turn(other, "Why?"), checkpoint="dialogue")
    store.finish_assistant_turn(second, "Because.")
    store.rate(second, "bo", "fail")
    job = collect.start_ablate(deps, Filters(), "t", "annotator", "leave-one-out")
    job.proc.wait(timeout=120)
    assert job.error() == (
        f"Error: no model server answers at {settings.local_base_url}: start `limachat serve` (ablate loads every "
        "variant it trains there)"
    )  # before any training: nothing was trained
    assert not (settings.layout.checkpoint("t-all")).exists()
    assert collect.job_status(deps).startswith("**ablate ablate-t**: failed")


def test_groups_by_selection_come_from_the_store_s_saved_selections(tmp_path):
    """--by selection: a chain's groups are the saved selections its last turn is on, read from the store
    beside the export it came out of."""
    from limachat.dialogues.export import Filters, export
    from limachat.dialogues.store import Store

    store = Store(tmp_path / "s.db")
    leaves = []
    for text in ("One?", "Two?", "Three?"):
        sid = store.start_session("chat", annotator="ana")
        reply = store.begin_assistant_turn(sid, store.add_user_turn(sid, text), checkpoint="dialogue")
        store.finish_assistant_turn(reply, f"Answer to {text}")
        store.rate(reply, "ana", "pass")
        leaves.append(reply)
    store.save_selection("diverse", "kcenter", {}, {}, [(leaves[0], 0), (leaves[1], 0)])
    store.save_selection("rules", "lima", {}, {}, [(leaves[1], 0)])
    path = tmp_path / "export.jsonl"
    export(store, path, "messages", Filters())
    groups = {c.messages[0][1]: sorted(c.groups) for c in ablate.read_export(path, "selection", store)}
    assert groups == {"One?": ["diverse"], "Two?": ["diverse", "rules"], "Three?": ["(no selection)"]}
    names = [v.name for v in ablate.variants(ablate.read_export(path, "selection", store))]
    assert names == ["all", "without-no-selection", "without-diverse", "without-rules"]
