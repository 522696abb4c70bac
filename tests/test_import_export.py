"""Import (LIMA, messages, ShareGPT, sessions) and export (training chains, full sessions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from limachat.cli import main
from limachat.dialogues import bundled
from limachat.dialogues.export import Filters, chains, export
from limachat.dialogues.formats import FormatError, import_file
from limachat.dialogues.store import Store


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "lima.db")


def write(path: Path, *records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


LIMA = [
    {"conversations": ["How do I boil an egg?", "Put it in boiling water for 8 minutes."], "source": "wikihow"},
    {"conversations": ["Name a colour.", "Blue.", "Another?", "Green."], "source": "multi_turn"},
]


def test_each_format_imports_and_is_detected(store, tmp_path):
    cases = {
        "lima": LIMA,
        "messages": [
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello!"},
                ]
            }
        ],
        "sharegpt": [
            {
                "conversations": [
                    {"from": "human", "value": "2+2?"},
                    {"from": "gpt", "value": "4"},
                    {"from": "human", "value": "times 3?"},
                    {"from": "gpt", "value": "12"},
                ]
            }
        ],
    }
    for fmt, records in cases.items():
        report = import_file(store, write(tmp_path / f"{fmt}.jsonl", *records))
        assert report.format == fmt and report.sessions_added == len(records) and not report.bad
    assert store.counts()["turns"] == 2 + 4 + 2 + 4
    messages_session = [s for s in store.sessions() if (s["meta"] or {}).get("system")][0]
    assert messages_session["mode"] == "imported" and messages_session["meta"]["system"] == "Be brief."
    assert {s["meta"].get("source") for s in store.sessions()} >= {"wikihow", "multi_turn"}


def test_importing_twice_adds_nothing(store, tmp_path):
    path = write(tmp_path / "lima.jsonl", *LIMA)
    import_file(store, path)
    again = import_file(store, path)
    assert (again.sessions_added, again.sessions_present, again.turns_added) == (0, 2, 0)
    assert len(store.sessions()) == 2


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"conversations": ["a", "b"', "not valid JSON"),
        ("[1, 2]", "each line must be a JSON object"),
        ('{"text": "hello"}', "not a known format"),
        ('{"conversations": ["a", 3]}', '"conversations" must be a list of strings'),
        ('{"messages": [{"role": "assistant", "content": "hi"}]}', "turn 1 is 'assistant' where 'user' belongs"),
        ('{"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}', 'message 2 needs "role"'),
        (
            '{"conversations": [{"from": "human", "value": "q"}, {"from": "alien", "value": "a"}]}',
            'turn 2 needs "from"',
        ),
        ('{"conversations": ["q", "   "]}', "turn 2 is empty"),
    ],
)
def test_a_bad_line_names_file_and_line_and_nothing_is_written(store, tmp_path, line, message):
    path = write(tmp_path / "bad.jsonl", LIMA[0], line)
    with pytest.raises(FormatError) as e:
        import_file(store, path)
    assert str(e.value).startswith(f"{path}:2: ") and message in str(e.value)
    assert store.sessions() == []  # the good first line was not half-imported


def test_skip_bad_goes_on_and_counts(store, tmp_path):
    path = write(tmp_path / "mixed.jsonl", LIMA[0], "{oops", LIMA[1], '{"conversations": []}')
    report = import_file(store, path, skip_bad=True)
    assert report.sessions_added == 2 and len(report.bad) == 2
    assert report.bad[0].startswith(f"{path}:2: not valid JSON") and report.bad[1].startswith(f"{path}:4: ")


def test_a_conversation_ending_with_the_user_is_reported_not_dropped(store, tmp_path):
    path = write(tmp_path / "open.jsonl", {"conversations": ["q1", "a1", "q2"]})
    report = import_file(store, path)
    assert report.sessions_added == 1 and report.warnings == [
        f"{path}:1: ends with a user turn (kept; it has no answer to train on)"
    ]
    assert store.counts()["turns"] == 3


def test_the_bundled_sets_import_cleanly(store):
    for name in ("train.jsonl", "heldout.jsonl"):
        report = import_file(store, bundled(name))
        assert report.format == "lima" and not report.bad and not report.warnings
    sessions = store.sessions(limit=1000)
    multi = [s for s in sessions if s["meta"]["source"] == "multi_turn"]
    assert len(sessions) - len(multi) >= 60 and len(multi) == 8  # 6 chains to train on, 2 held out
    exchanges = {s["id"]: 0 for s in multi}
    for sid in exchanges:
        exchanges[sid] = max(t["exchange"] for t in store.turns(sid) if t["role"] == "assistant")
    assert all(3 <= n <= 6 for n in exchanges.values())


# -- export ---------------------------------------------------------------------------------------


def rated_chain(store, labels, checkpoint="dialogue", annotator="ana", mode="chat", gold=None):
    """A session whose assistant turns carry `labels` (None = unrated); returns the assistant turn ids."""
    sid = store.start_session(mode)
    parent, ids = None, []
    for i, label in enumerate(labels):
        u = store.add_user_turn(sid, f"{checkpoint} question {i} {labels}", parent_id=parent)
        a = store.begin_assistant_turn(sid, u, checkpoint=checkpoint)
        store.finish_assistant_turn(a, f"answer {i}")
        if label:
            store.rate(a, annotator, label)
        if gold and i in gold:
            store.edit(a, annotator, gold[i])
        parent, ids = a, ids + [a]
    return ids


def test_export_filters(store):
    rated_chain(store, ["excellent", "pass", "excellent"])
    rated_chain(store, ["pass", "fail", "excellent"])
    rated_chain(store, ["fail", "pass"], checkpoint="zero-shot")
    rated_chain(store, ["excellent", None])
    rated_chain(store, ["pass"], annotator="ben")

    def count(**kw):
        return [len(c.labels) for c in chains(store, Filters(**kw))]

    assert sorted(count()) == [1, 2, 2, 3, 3]
    assert sorted(count(min_label="pass")) == [1, 3]
    assert count(min_label="excellent") == []
    assert sorted(count(cut_at_first_fail=True)) == [1, 1, 2, 3]  # the zero-shot chain fails at once: gone
    assert sorted(count(cut_at_first_fail=True, min_label="pass")) == [1, 1, 3]
    assert count(checkpoint="zero-shot") == [2]
    assert count(annotator="ben") == [1]
    assert sorted(count(min_turns=3)) == [3, 3]
    assert count(mode="compare") == []


def test_prefer_gold_uses_the_correction(store):
    rated_chain(store, ["fail"], gold={0: "the corrected answer"})
    [plain] = chains(store, Filters())
    [gold] = chains(store, Filters(prefer_gold=True, min_label="pass"))
    assert plain.turns[1]["content"] == "answer 0"
    assert gold.turns[1]["content"] == "the corrected answer" and gold.labels == ["excellent"]


def test_identical_chains_are_written_once(store):
    rated_chain(store, ["pass"])
    rated_chain(store, ["pass"])
    assert len(list(chains(store))) == 1


def test_training_exports_load_in_datasets(store, tmp_path):
    import datasets

    rated_chain(store, ["excellent", "pass"])
    rated_chain(store, ["pass"], checkpoint="zero-shot")
    for fmt in ("lima", "messages"):
        out = tmp_path / f"{fmt}.jsonl"
        assert export(store, out, fmt, Filters(min_label="pass")) == (2, 3)
        ds = datasets.load_dataset("json", data_files=str(out), split="train")
        assert ds.num_rows == 2
        row = ds[0] if len(ds[0].get("conversations") or ds[0].get("messages")) == 4 else ds[1]
        if fmt == "lima":
            assert row["source"] == "multi_turn" and row["conversations"][1] == "answer 0"
        else:
            assert [m["role"] for m in row["messages"]] == ["user", "assistant", "user", "assistant"]
        assert row["limachat"]["labels"] == ["excellent", "pass"] and row["limachat"]["checkpoints"] == ["dialogue"]


def test_sessions_round_trip_is_byte_identical(store, tmp_path):
    ids = rated_chain(store, ["pass", "excellent"])
    store.rate(ids[0], "ana", "fail")  # history: pass -> fail
    store.rate(ids[0], "ben", "pass")
    store.edit(ids[1], "ana", "gold text ünïcode")
    sid = store.start_session("blind", annotator="ana", meta={"b": "zero-shot", "a": "dialogue"}, prompt_set="bundled")
    ua, ub = store.add_user_turn(sid, "q", lane="a"), store.add_user_turn(sid, "q", lane="b")
    a = store.begin_assistant_turn(sid, ua, checkpoint="dialogue", lane="a", params={"top_p": 0.9, "temperature": 0.7})
    b = store.begin_assistant_turn(sid, ub, checkpoint="zero-shot", lane="b")
    store.finish_assistant_turn(a, "A", ttft=0.123456789, latency=1 / 3)
    store.finish_assistant_turn(b, "B", status="error", error="boom")
    store.verdict(sid, a, b, "a", "ana")

    first = tmp_path / "sessions.jsonl"
    export(store, first, "sessions")
    other = Store(tmp_path / "other.db")
    report = import_file(other, first)
    assert report.format == "sessions" and report.sessions_added == 2
    second = tmp_path / "again.jsonl"
    export(other, second, "sessions")
    assert second.read_bytes() == first.read_bytes()
    assert import_file(other, first).turns_added == 0  # merging the same file again adds nothing
    export(other, second, "sessions")
    assert second.read_bytes() == first.read_bytes()


def test_merging_two_annotators_work(tmp_path):
    """Two machines rate the same session; merging keeps both, each annotator's latest current."""
    home = Store(tmp_path / "home.db")
    [a] = rated_chain(home, ["pass"])
    shared = tmp_path / "shared.jsonl"
    export(home, shared, "sessions")
    laptop = Store(tmp_path / "laptop.db")
    import_file(laptop, shared)
    laptop.rate(a, "ben", "excellent")
    laptop.rate(a, "ana", "fail")  # ana changed her mind on the laptop
    back = tmp_path / "back.jsonl"
    export(laptop, back, "sessions")
    import_file(home, back)
    assert {r["annotator"]: r["label"] for r in home.ratings(a)} == {"ana": "fail", "ben": "excellent"}
    assert len(home.ratings(a, history=True)) == 3


def test_cli_import_export(tmp_path, clean_env):
    runner = CliRunner()
    src = write(tmp_path / "lima.jsonl", *LIMA)
    result = runner.invoke(main, ["--home", str(tmp_path / "h"), "import", str(src)])
    assert result.exit_code == 0 and "lima: 2 conversations added, 6 turns" in result.output
    bad = write(tmp_path / "bad.jsonl", LIMA[0], "{x")
    result = runner.invoke(main, ["--home", str(tmp_path / "h"), "import", str(bad)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith(f"Error: {bad}:2: not valid JSON")
    out = tmp_path / "out.jsonl"
    result = runner.invoke(main, ["--home", str(tmp_path / "h"), "export", "--format", "messages", "-o", str(out)])
    assert result.exit_code == 0 and f"{out}: 2 chains, 3 assistant turns" in result.output
    result = runner.invoke(
        main, ["--home", str(tmp_path / "h"), "export", "--format", "sessions", "-o", str(out), "--min-label", "pass"]
    )
    assert result.exit_code == 1 and "drop --min-label" in result.output


def test_sessions_of_imported_conversations_round_trip(store, tmp_path):
    """Imported turns share one creation time, so the export's order does not put parents first;
    a session longer than one insert batch (100 rows) must still merge."""
    long = {"conversations": [f"turn {i}" for i in range(240)], "source": "multi_turn"}
    import_file(store, write(tmp_path / "long.jsonl", long))
    first = tmp_path / "s1.jsonl"
    export(store, first, "sessions")
    other = Store(tmp_path / "other.db")
    assert import_file(other, first).turns_added == 240
    second = tmp_path / "s2.jsonl"
    export(other, second, "sessions")
    assert second.read_bytes() == first.read_bytes()


def test_a_session_line_failing_half_way_leaves_nothing_with_skip_bad(store, tmp_path):
    rated_chain(store, ["pass"])
    good = tmp_path / "good.jsonl"
    export(store, good, "sessions")
    record = json.loads(good.read_text())
    record["session"]["id"] = "new-session"
    for t in record["turns"]:
        t["session_id"] = "new-session"
        t["id"] = "new-" + t["id"]
        t["parent_id"] = t["parent_id"] and "new-" + t["parent_id"]
    turns = [t["id"] for t in record["turns"] if t["role"] == "assistant"]
    record.update(ratings=[], edits=[])
    record["verdicts"] = [  # its session is none the database has: the foreign key fails after the turns went in
        {"id": "v", "session_id": "elsewhere", "turn_a": turns[0], "turn_b": turns[0], "verdict": "a"}
        | {"annotator": "ana", "created": "2026-01-01"}
    ]
    other = Store(tmp_path / "other.db")
    report = import_file(other, write(tmp_path / "half.jsonl", record), skip_bad=True)
    assert len(report.bad) == 1 and "FOREIGN KEY" in report.bad[0], report.bad
    assert other.counts()["turns"] == 0
    assert other.counts()["sessions"] == 0


def test_prompt_sets(tmp_path):
    from limachat.dialogues.formats import load_prompts

    bundled_set = load_prompts(bundled("prompts.jsonl"))
    assert len(bundled_set) == 10 and len({p["id"] for p in bundled_set}) == 10
    plain = tmp_path / "mine.txt"
    plain.write_text("Plan my week.\n\nExplain DNS.\n")
    assert load_prompts(plain) == [{"id": "p01", "prompt": "Plan my week."}, {"id": "p02", "prompt": "Explain DNS."}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(FormatError, match=rf'^{bad}:2: needs a "prompt" string'):
        load_prompts(bad)


def test_a_judge_and_a_teacher_stay_machines_through_a_sessions_backup(tmp_path):
    store = Store(tmp_path / "a.db")
    sid = store.start_session("chat")
    u = store.add_user_turn(sid, "q")
    a = store.begin_assistant_turn(sid, u, checkpoint="dialogue")
    store.finish_assistant_turn(a, "answer")
    store.rate(a, "ana", "pass")
    store.register_annotator("judge/x/label-v1", "judge", model="x")
    store.record_judgment("judge/x/label-v1", "label", a, result="fail", raw="{}")
    store.register_annotator("teacher/x/revise-v1", "teacher", model="x")
    rubric = store.set_rubric("general", "- be right", "teacher/x/revise-v1")
    edit = store.teacher_edit(a, "teacher/x/revise-v1", "a better answer", rubric)
    store.review_edit(edit, "ana", accept=False)
    backup = tmp_path / "sessions.jsonl"
    export(store, backup, "sessions")
    other = Store(tmp_path / "b.db")
    import_file(other, backup)
    assert other.annotator_kinds() == {"judge/x/label-v1": "judge", "teacher/x/revise-v1": "teacher"}
    assert other.lowest_labels(raters="humans") == {a: "pass"} and other.lowest_labels(raters="judges") == {a: "fail"}
    assert other.teacher_edits()[0]["review"] == "rejected" and other.gold_edits(source="both") == {}
    again = tmp_path / "again.jsonl"
    export(other, again, "sessions")
    assert again.read_bytes() == backup.read_bytes()


def test_the_filters_flags_and_their_arguments_come_from_one_dataclass():
    """Every Filters field is an `export` flag with the field's default, and `Filters.args` (what the
    Collect tab hands a background `limachat train`) parses back to the same filters."""
    from dataclasses import fields

    import click

    from limachat.commands.data import export_cmd
    from limachat.dialogues.export import Filters

    def parsed(*args):
        ctx = export_cmd.make_context("export", ["--format", "lima", "-o", "x.jsonl", *args])
        names = {f.name for f in fields(Filters)}
        return Filters(**{k: v for k, v in ctx.params.items() if k in names})

    flags = {p.name for p in export_cmd.params if isinstance(p, click.Option)}
    assert {f.name for f in fields(Filters)} <= flags
    assert parsed() == Filters(), "no flag: every filter at its default"
    wanted = Filters(
        min_label="pass",
        prefer_gold=True,
        checkpoint="dialogue",
        mode="blind",
        min_turns=2,
        raters="all",
        human_wins=True,
        min_score=4.5,
        gold_from="both",
    )
    assert parsed(*wanted.args()) == wanted


# -- the formats people bring in -----------------------------------------------------------------------
ALPACA = [
    {"instruction": "Give a synonym.", "input": "happy", "output": "Glad."},
    {"instruction": "Name a prime number.", "input": "", "output": "Seven."},
]


def test_alpaca_as_a_json_array_and_as_jsonl_with_a_bom_and_crlf(store, tmp_path):
    array = tmp_path / "alpaca_data.json"
    array.write_text(json.dumps(ALPACA, indent=2))
    report = import_file(store, array)
    assert (report.format, report.sessions_added, report.turns_added) == ("alpaca", 2, 4)
    [first, second] = sorted((c.messages() for c in chains(store)), key=lambda m: m[0]["content"])
    assert first == [
        {"role": "user", "content": "Give a synonym.\n\nhappy"},
        {"role": "assistant", "content": "Glad."},
    ]
    assert second[0]["content"] == "Name a prime number."  # an empty input adds nothing
    lines = tmp_path / "alpaca.jsonl"
    lines.write_bytes(b"\xef\xbb\xbf" + b"".join(json.dumps(r).encode() + b"\r\n" for r in ALPACA))
    again = import_file(store, lines)
    assert again.sessions_present == 2 and again.sessions_added == 0 and not again.bad


def test_openai_fine_tuning_lines_keep_the_system_message_and_weights(store, tmp_path):
    record = {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Capital of Peru?"},
            {"role": "assistant", "content": "Lima, I think.", "weight": 0},
            {"role": "user", "content": "Sure?"},
            {"role": "assistant", "content": "Yes: Lima.", "weight": 1},
        ]
    }
    import_file(store, write(tmp_path / "openai.jsonl", record))
    out = tmp_path / "out.jsonl"
    export(store, out, "messages")
    assert json.loads(out.read_text())["messages"] == record["messages"]


OASST = [  # one tree: a prompt, three ranked replies, a follow-up under the best, a deleted reply
    {"message_id": "m1", "parent_id": None, "role": "prompter", "text": "Tips for a first marathon?"},
    {"message_id": "m2", "parent_id": "m1", "role": "assistant", "text": "Train slowly for months.", "rank": 0},
    {"message_id": "m3", "parent_id": "m1", "role": "assistant", "text": "Run a lot.", "rank": 1},
    {"message_id": "m4", "parent_id": "m1", "role": "assistant", "text": "Buy shoes.", "rank": 2},
    {"message_id": "m5", "parent_id": "m2", "role": "prompter", "text": "How many months?"},
    {"message_id": "m6", "parent_id": "m5", "role": "assistant", "text": "Four to six."},
    {"message_id": "m7", "parent_id": "m1", "role": "assistant", "text": "spam", "deleted": True},
]


def nested(messages: list[dict], root: str = "m1") -> dict:
    def node(m):
        kids = [node(k) for k in messages if k["parent_id"] == m["message_id"]]
        return {k: v for k, v in m.items() if k != "parent_id"} | ({"replies": kids} if kids else {})

    return {"message_tree_id": root, "prompt": node(next(m for m in messages if m["message_id"] == root))}


def test_openassistant_trees_keep_siblings_and_their_ranks_become_labels(store, tmp_path):
    from limachat.dialogues.preference import pairs

    flat = [{**m, "message_tree_id": "m1"} for m in OASST]
    report = import_file(store, write(tmp_path / "oasst.jsonl", *reversed(flat)))  # any line order
    assert (report.format, report.sessions_added, report.turns_added) == ("oasst", 1, 6)
    assert report.warnings == [f"{tmp_path / 'oasst.jsonl'}:1: 1 deleted messages left out, with their replies"]
    [session] = store.sessions()
    root = store.children(None, session["id"])[0]
    replies = store.children(root["id"])
    assert [r["content"] for r in replies] == ["Train slowly for months.", "Run a lot.", "Buy shoes."]
    assert [store.ratings(r["id"])[0]["label"] for r in replies] == ["excellent", "pass", "fail"]
    assert len(list(chains(store))) == 3, "one chain per leaf: the follow-up, then the two other replies"
    rows = list(pairs(store))
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [
        ("Train slowly for months.", "Run a lot."),
        ("Train slowly for months.", "Buy shoes."),
        ("Run a lot.", "Buy shoes."),
    ]
    assert rows[0]["limachat"]["annotators"] == [{"name": "oasst-ranking", "kind": "human"}]
    again = import_file(store, write(tmp_path / "trees.jsonl", nested(flat)))  # the same tree, nested
    assert again.format == "oasst" and again.sessions_present == 1 and again.sessions_added == 0


def test_preference_rows_import_as_a_compare_verdict_and_export_back(store, tmp_path):
    from limachat.dialogues.dataset import Output, write_jsonl

    rows = [
        {
            "prompt": [
                {"role": "user", "content": "Pick a fruit."},
                {"role": "assistant", "content": "An apple."},
                {"role": "user", "content": "Another?"},
            ],
            "chosen": [{"role": "assistant", "content": "A pear."}],
            "rejected": [{"role": "assistant", "content": "An apple."}],
        },
        {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},  # TRL's standard (string) form
    ]
    report = import_file(store, write(tmp_path / "pairs.jsonl", *rows))
    assert (report.format, report.sessions_added) == ("preference", 2)
    assert {s["mode"] for s in store.sessions()} == {"compare"}
    back = write_jsonl(Output(store, "preference", Filters()), tmp_path / "back.jsonl")
    assert sorted(json.dumps([r["prompt"], r["chosen"], r["rejected"]]) for r in back) == sorted(
        json.dumps(r)
        for r in [
            [rows[0]["prompt"], rows[0]["chosen"], rows[0]["rejected"]],
            [
                [{"role": "user", "content": "Say hi."}],
                [{"role": "assistant", "content": "Hi!"}],
                [{"role": "assistant", "content": "No."}],
            ],
        ]
    )
    assert {r["limachat"]["annotators"][0]["name"] for r in back} == {"imported"}
    assert import_file(store, tmp_path / "back.jsonl").sessions_present == 2, "an exported pair is that pair"
