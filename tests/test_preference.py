"""Preference data out of the store: pairs by source, KTO labels, the Hub folder, and the CLI around them.
The store is filled the way the app fills it (tests/test_app_handlers drives the handlers themselves):
a blind compare session whose sides each keep their own history, a chat with a regenerated reply and a
gold edit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from limachat.cli import main
from limachat.dialogues.dataset import Output, write_hub_dir, write_jsonl
from limachat.dialogues.export import Filters
from limachat.dialogues.preference import kto_rows, pairs, preview
from limachat.dialogues.store import Store


def reply(store: Store, sid: str, parent: str, text: str, checkpoint: str, lane: str | None = None) -> str:
    tid = store.begin_assistant_turn(sid, parent, checkpoint=checkpoint, lane=lane)
    store.finish_assistant_turn(tid, text)
    return tid


def demo_user(store: Store) -> dict[str, str]:
    """What a `make demo` user leaves behind: a blind compare with verdicts on two exchanges, a chat reply
    regenerated and both rated, a gold edit, and a pairwise judge on the compare's first exchange."""
    ids: dict[str, str] = {}
    sid = store.start_session("blind", annotator="ana", meta={"lanes": {"a": "zero-shot", "b": "dialogue"}})
    ua = store.add_user_turn(sid, "How do I boil an egg?", lane="a")
    ub = store.add_user_turn(sid, "How do I boil an egg?", lane="b")
    ids["a1"] = reply(store, sid, ua, "Eggs are food.", "zero-shot", "a")
    ids["b1"] = reply(store, sid, ub, "Lower it into boiling water for nine minutes.", "dialogue", "b")
    store.verdict(sid, ids["a1"], ids["b1"], "b", "ana")
    ua2 = store.add_user_turn(sid, "And a soft one?", parent_id=ids["a1"], lane="a")
    ub2 = store.add_user_turn(sid, "And a soft one?", parent_id=ids["b1"], lane="b")
    ids["a2"] = reply(store, sid, ua2, "Six minutes.", "zero-shot", "a")
    ids["b2"] = reply(store, sid, ub2, "Eggs.", "dialogue", "b")
    store.verdict(sid, ids["a2"], ids["b2"], "a", "ana")  # the histories differ: no pair
    store.register_annotator("judge-1", "judge", model="base")
    store.verdict(sid, ids["a1"], ids["b1"], "a", "judge-1")
    store.verdict(sid, ids["a2"], ids["b2"], "inconsistent", "judge-1")
    chat = store.start_session("chat", annotator="ana", meta={"system": "Answer briefly."})
    u = store.add_user_turn(chat, "Name three rivers.")
    ids["r1"] = reply(store, chat, u, "Rivers are wet.", "dialogue")
    store.rate(ids["r1"], "ana", "fail")
    ids["r2"] = reply(store, chat, u, "The Nile, the Amazon and the Danube.", "dialogue")  # regenerated
    store.rate(ids["r2"], "ana", "excellent")
    store.edit(ids["r1"], "ana", "The Nile, the Rhine and the Mekong.")
    ids["chat"], ids["blind"] = chat, sid
    return ids


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "lima.db")


def test_a_demo_users_session_gives_the_pairs_expected_by_source(store, tmp_path):
    ids = demo_user(store)
    out = Output(store, "preference", Filters())
    rows = write_jsonl(out, tmp_path / "pairs.jsonl")
    assert out.tally.pairs == {"verdict": 1, "edit": 1, "label": 1}
    assert out.tally.skipped == {"verdicts on sides with different histories": 1}
    verdict, edit, label = rows
    assert verdict["prompt"] == [{"role": "user", "content": "How do I boil an egg?"}]
    assert verdict["chosen"] == [{"role": "assistant", "content": "Lower it into boiling water for nine minutes."}]
    assert verdict["rejected"] == [{"role": "assistant", "content": "Eggs are food."}]
    assert verdict["limachat"]["annotators"] == [{"name": "ana", "kind": "human"}]
    assert verdict["limachat"]["chosen_turn"] == ids["b1"] and verdict["limachat"]["rejected_turn"] == ids["a1"]
    assert verdict["limachat"]["checkpoints"] == {"chosen": "dialogue", "rejected": "zero-shot"}
    system = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name three rivers."}]
    assert edit["prompt"] == system and edit["chosen"][0]["content"] == "The Nile, the Rhine and the Mekong."
    assert edit["rejected"][0]["content"] == "Rivers are wet." and edit["limachat"]["source"] == "edit"
    assert label["prompt"] == system and label["chosen"][0]["content"].startswith("The Nile, the Amazon")
    assert label["limachat"]["labels"] == {"chosen": "excellent", "rejected": "fail"}
    assert [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()] == rows


def test_judges_verdicts_only_with_raters_judges_or_all_and_never_inconsistent(store):
    ids = demo_user(store)
    judged = list(pairs(store, Filters(raters="judges")))
    assert [r["limachat"]["source"] for r in judged] == ["verdict", "edit"]  # the judge rated no siblings
    assert judged[0]["chosen"][0]["content"] == "Eggs are food."
    assert judged[0]["limachat"]["annotators"] == [{"name": "judge-1", "kind": "judge"}]
    both = preview(store, Filters(raters="all"))
    assert both.pairs["verdict"] == 2 and both.skipped["inconsistent verdicts"] == 1
    # --human-wins: ana's verdict on the first exchange silences the judge's
    won = [r for r in pairs(store, Filters(raters="all", human_wins=True)) if r["limachat"]["source"] == "verdict"]
    assert [r["limachat"]["chosen_turn"] for r in won] == [ids["b1"]]


def test_ties_give_no_pair_and_dedupe_keeps_one_row(store):
    ids = demo_user(store)
    store.verdict(ids["blind"], ids["a1"], ids["b1"], "tie", "bo")
    store.rate(ids["r1"], "bo", "excellent")  # the lowest label stays fail
    store.verdict(ids["blind"], ids["a1"], ids["b1"], "b", "cy")  # agrees with ana
    tally = preview(store, Filters())
    assert tally.pairs["verdict"] == 2 and tally.skipped["tie verdicts"] == 1
    rows = list(pairs(store, Filters(), dedupe=True))
    assert [r["limachat"]["source"] for r in rows] == ["verdict", "edit", "label"]
    store.rate(ids["r2"], "bo", "fail")  # now both siblings are fail: equal labels, no pair
    assert preview(store, Filters()).skipped["siblings with equal labels"] == 1
    parent = store.turn(ids["r1"])["parent_id"]
    same = reply(store, ids["chat"], parent, "Rivers are wet.", "dialogue")  # a regeneration drew the same text
    store.rate(same, "ana", "excellent")
    tally = preview(store, Filters())
    assert tally.skipped["pairs of the same text"] == 1 and tally.pairs["label"] == 1, tally  # same over r2


def test_filters_apply_to_pairs(store):
    ids = demo_user(store)
    assert preview(store, Filters(mode="chat")).pairs == {"edit": 1, "label": 1}
    assert preview(store, Filters(checkpoint="zero-shot")).pairs == {"verdict": 1}
    assert preview(store, Filters(annotator="bo")).pairs == {}
    assert preview(store, Filters(until="2000-01-01")).pairs == {}
    store.save_selection("picked", "kcenter", {}, {}, [(ids["r2"], 0)])
    assert preview(store, Filters(selection="picked")).pairs == {"edit": 1, "label": 1}
    store.create_study(
        "s1",
        prompt_set="p",
        prompts=[{"id": "p1", "prompt": "x"}],
        checkpoints=["zero-shot", "dialogue"],
        conversations=1,
        turns=1,
        blind=True,
        annotators=[],
        seed=1,
    )
    assert preview(store, Filters(study="s1")).pairs == {}
    with pytest.raises(Exception, match="no study 'nope'"):
        preview(store, Filters(study="nope"))


def test_kto_labels_every_rated_reply(store):
    ids = demo_user(store)
    store.rate(ids["b1"], "ana", "pass")
    rows = list(kto_rows(store, Filters()))
    assert [(r["completion"][0]["content"], r["label"]) for r in rows] == [
        ("Rivers are wet.", False),
        ("The Nile, the Amazon and the Danube.", True),
    ]
    assert rows[0]["prompt"][0] == {"role": "system", "content": "Answer briefly."}
    good = list(kto_rows(store, Filters(), pass_is_good=True))
    assert [r["limachat"]["turn"] for r in good if r["label"]] == [ids["b1"], ids["r2"]]
    store.rate(ids["r2"], "bo", "fail")  # two people disagree: the lowest label counts
    assert [r["label"] for r in kto_rows(store, Filters())] == [False, False]
    store.register_annotator("judge-1", "judge")
    store.rate(ids["r1"], "judge-1", "excellent")
    judged = list(kto_rows(store, Filters(raters="judges")))
    assert [(r["limachat"]["turn"], r["label"]) for r in judged] == [(ids["r1"], True)]


def test_the_hub_folder_loads_as_it_is_and_its_card_states_the_counts(store, tmp_path):
    from datasets import load_dataset

    demo_user(store)
    folder = tmp_path / "hub"
    out = Output(store, "preference", Filters())
    write_hub_dir(out, list(out), folder, "cc-by-4.0")
    out = Output(store, "kto", Filters(), pass_is_good=True)
    write_hub_dir(out, list(out), folder)
    pref = load_dataset(str(folder), split="train")  # the first config written is the default
    assert pref.column_names == ["prompt", "chosen", "rejected", "limachat"] and len(pref) == 3
    kto = load_dataset(str(folder), "kto", split="train")
    assert kto.column_names == ["prompt", "completion", "label", "limachat"] and kto["label"] == [False, True]
    readme = (folder / "README.md").read_text()
    assert readme.startswith("---\nlicense: cc-by-4.0\n")
    assert "- by source: 1 verdict, 1 edit, 1 label" in readme and "- by source: 1 bad, 1 good" in readme
    assert "- annotators: 1 human" in readme
    assert "fail 1 (50%), pass 0 (0%), excellent 1 (50%)" in readme
    assert "`limachat export --format kto --pass-is-good`" in readme


def test_the_hub_folder_never_overwrites_what_limachat_did_not_write(store, tmp_path):
    demo_user(store)
    out = Output(store, "preference", Filters())
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my own notes\n")
    with pytest.raises(ValueError, match=rf"^--hf-dir {mine}: holds README.md, which limachat did not write"):
        write_hub_dir(out, list(out), mine)
    assert (mine / "README.md").read_text() == "my own notes\n" and sorted(p.name for p in mine.iterdir()) == [
        "README.md"
    ]
    folder = tmp_path / "hub"
    write_hub_dir(out, list(out), folder)
    with pytest.raises(ValueError, match="already holds the preference config limachat wrote; --force replaces it"):
        write_hub_dir(out, list(out), folder)
    write_hub_dir(out, list(out), folder, force=True)  # limachat's own output, replaced on request
    kto = Output(store, "kto", Filters(), pass_is_good=True)
    write_hub_dir(kto, list(kto), folder)  # another format joins limachat's folder
    (folder / "preference" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds preference/notes.txt, which limachat did not write"):
        write_hub_dir(out, list(out), folder, force=True)
    (folder / "preference" / "notes.txt").unlink()
    (folder / "README.md").write_text((folder / "README.md").read_text() + "\nMy edit.\n")
    with pytest.raises(ValueError, match="README.md was changed since limachat wrote it"):
        write_hub_dir(out, list(out), folder, force=True)
    assert (folder / "README.md").read_text().endswith("My edit.\n")


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def home(tmp_path, clean_env, monkeypatch):
    monkeypatch.setenv("LIMACHAT_HOME", str(tmp_path / "home"))
    store = Store(tmp_path / "home" / "limachat.db")
    demo_user(store)
    store.close()
    return tmp_path


def test_cli_writes_preference_and_kto_and_loads_with_datasets(home):
    from datasets import load_dataset

    result = run("export", "--format", "preference", "-o", str(home / "p.jsonl"), "--hf-dir", str(home / "hub"))
    assert result.exit_code == 0, result.output
    assert "3 pairs: 1 from verdicts, 1 from edits, 1 from labels" in result.output
    assert len(load_dataset("json", data_files=str(home / "p.jsonl"), split="train")) == 3
    assert len(load_dataset(str(home / "hub"), split="train")) == 3
    result = run("export", "--format", "kto", "-o", str(home / "k.jsonl"))
    assert "2 replies: 1 good, 1 bad" in result.output
    assert load_dataset("json", data_files=str(home / "k.jsonl"), split="train")["label"] == [False, True]


@pytest.mark.parametrize(
    "args, line",
    [
        (["--format", "kto", "--min-turns", "2", "-o", "x.jsonl"], "--min-turns shapes training chains"),
        (["--format", "messages", "--dedupe", "-o", "x.jsonl"], "--dedupe goes with --format preference or kto"),
        (["--format", "preference", "--since", "last tuesday", "-o", "x.jsonl"], "--since must be an ISO date"),
        (["--format", "preference", "--study", "nope", "-o", "x.jsonl"], "no study 'nope'"),
        (["--format", "sessions", "--hf-dir", "hub"], "--hf-dir takes --format lima, messages, preference, kto"),
        (["--format", "preference"], "give -o/--output FILE, --hf-dir DIR, or both"),
        (["--format", "preference", "-o", "p.jsonl", "--push-to-hub", "me/x"], "--push-to-hub uploads the --hf-dir"),
        (
            ["--format", "preference", "--hf-dir", "hub", "--push-to-hub", "a/b/c"],
            "--push-to-hub 'a/b/c': Repo id must be in the form 'repo_name' or 'namespace/repo_name'",
        ),
        (
            ["--format", "preference", "--hf-dir", "no/such/hub"],
            "--hf-dir no/such/hub: the folder no/such does not exist",
        ),
    ],
)
def test_bad_export_options_are_one_line(home, args, line):
    result = run("export", *args)
    assert result.exit_code != 0 and line in result.output and "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_push_without_a_token_or_a_network_is_one_line(home, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(home / "hf"))  # no saved token
    monkeypatch.delenv("HF_TOKEN", raising=False)
    args = ["export", "--format", "preference", "--hf-dir", str(home / "hub"), "--push-to-hub", "me/limachat-pairs"]
    result = run(*args)
    assert result.exit_code != 0 and "no Hugging Face token; run `hf auth login` or set HF_TOKEN" in result.output
    assert (home / "hub" / "README.md").is_file()  # everything up to the upload was done
    from tests.conftest import free_port

    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    result = run(*args, "--force")  # the folder is the first run's: replacing it takes --force
    assert result.exit_code != 0 and "--push-to-hub me/limachat-pairs: cannot reach the Hub" in result.output, (
        result.output
    )
    assert "Traceback" not in result.output


def test_written_files_round_trip(home):
    Path(home / "p.jsonl").write_text("")  # an old file is replaced, not appended to
    run("export", "--format", "preference", "-o", str(home / "p.jsonl"), "--dedupe")
    assert len((home / "p.jsonl").read_text().splitlines()) == 3
