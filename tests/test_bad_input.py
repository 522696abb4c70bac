"""Bad input at every entry point: one clear line that says what and where, a non-zero exit from the
CLI, no traceback, and the database exactly as it was (row counts and integrity_check)."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from limachat.demo import chat, compare
from limachat.demo.answer import Deps
from limachat.dialogues import bundled
from limachat.dialogues.formats import import_file
from limachat.dialogues.store import Store
from limachat.serve.checkpoints import Checkpoint
from limachat.settings import Settings

SESSION = {
    "format": "limachat.session/1",
    "session": {"id": "s-bad", "created": "2026-01-01T00:00:00", "mode": "chat"},
    "turns": [],
    "ratings": [],
    "edits": [],
    "verdicts": [],
}


def session_with(**changes) -> str:
    record = json.loads(json.dumps(SESSION))
    for key, value in changes.items():
        record[key] = value
    return json.dumps(record) + "\n"


TURN = {
    "id": "t-bad",
    "session_id": "s-bad",
    "parent_id": None,
    "lane": None,
    "exchange": 1,
    "role": "user",
    "content": "hi",
    "status": "ok",
    "created": "2026-01-01T00:00:01",
}

RATING_ROW = {"id": "r", "turn_id": "t-bad", "annotator": "a", "label": "pass", "created": "x", "current": 1}

# (id, files to write in the working folder, environment, CLI arguments, what the one line must contain)
CLI_CASES = [
    (
        "bench-no-question-id",
        {
            "q.jsonl": b'{"question_id": 1, "category": "math", "turns": ["a", "b"]}\n{"category": "math", "turns": ["c"]}\n'
        },
        {},
        ["bench", "answer", "q.jsonl", "--name", "b", "--checkpoints", "dialogue"],
        'q.jsonl:2: a question needs a "question_id"',
    ),
    (
        "bench-duplicate-id",
        {
            "q.jsonl": b'{"question_id": 7, "turns": ["a"]}\n{"question_id": "x", "turns": ["b"]}\n{"question_id": 7, "turns": ["c"]}\n'
        },
        {},
        ["bench", "answer", "q.jsonl", "--name", "b", "--checkpoints", "dialogue"],
        "q.jsonl:3: id '7' again (first on line 1)",
    ),
    (
        "bench-turns-not-strings",
        {"q.jsonl": b'{"question_id": 1, "turns": ["a", 2]}\n'},
        {},
        ["bench", "answer", "q.jsonl", "--name", "b", "--checkpoints", "dialogue"],
        'q.jsonl:1: "turns" must be a non-empty list of non-empty strings',
    ),
    (
        "bench-turns-empty",
        {"q.jsonl": b'{"question_id": 1, "category": "stem", "turns": []}\n'},
        {},
        ["bench", "answer", "q.jsonl", "--name", "b", "--checkpoints", "dialogue"],
        'q.jsonl:1: "turns" must be a non-empty list of non-empty strings',
    ),
    (
        "bench-judge-prompts-without-a-template",
        {
            "p.jsonl": b'{"name": "g", "type": "single", "system_prompt": "", "prompt_template": "{question} {answer}", '
            b'"output_format": "[[rating]]"}\n'
        },
        {},
        ["bench", "judge", "b", "--mode", "single", "--judge-prompts", "p.jsonl"],
        "p.jsonl: no single template for the second turn",
    ),
    (
        "bench-judge-prompts-unknown-field",
        {
            "p.jsonl": b'{"name": "g", "type": "pairwise", "system_prompt": "", "prompt_template": "{question} {answer}", '
            b'"output_format": "[[A]]"}\n'
        },
        {},
        ["bench", "judge", "b", "--mode", "pairwise", "--judge-prompts", "p.jsonl"],
        "p.jsonl:1: prompt_template uses answer; a pairwise template may use",
    ),
    (
        "filter-empty",
        {"qa.jsonl": b"\n"},
        {},
        ["filter", "qa.jsonl", "--recipe", "lima", "--name", "x"],
        "qa.jsonl: empty",
    ),
    ("bench-judge-no-run", {}, {}, ["bench", "judge", "nope", "--mode", "single"], "no bench run 'nope'"),
    (
        "import-binary",
        {"in.jsonl": b"\x89PNG\r\n\x1a\n\x00\x00binary"},
        {},
        ["import", "in.jsonl"],
        "in.jsonl:1: not UTF-8 text",
    ),
    (
        "import-latin1",
        {"in.jsonl": '{"conversations": ["caf\xe9", "ok"]}\n'.encode("latin-1")},
        {},
        ["import", "in.jsonl"],
        "in.jsonl:1: not UTF-8 text (byte 0xe9",
    ),
    ("import-empty", {"in.jsonl": b""}, {}, ["import", "in.jsonl"], "in.jsonl: empty"),
    (
        "import-json-array-in-lines",
        {"in.jsonl": b'{"conversations": ["a", "b"]}\n[{"conversations": ["a", "b"]}]\n'},
        {},
        ["import", "in.jsonl"],
        "in.jsonl:2: each line must be a JSON object (a JSON array?",
    ),
    (
        "import-json-array-element",
        {"in.json": b'[\n  {"conversations": ["a", "b"]},\n  3\n]\n'},
        {},
        ["import", "in.json"],
        "in.json:3: each element must be a JSON object",
    ),
    (
        "import-pretty-json",
        {"in.jsonl": b'{\n  "conversations": ["a", "b"]\n}\n'},
        {},
        ["import", "in.jsonl"],
        "in.jsonl:1: not valid JSON",
    ),
    (
        "import-second-line-bad",
        {"in.jsonl": b'{"conversations": ["a", "b"]}\n{"conversations": 3}\n'},
        {},
        ["import", "in.jsonl"],
        "in.jsonl:2:",
    ),
    (
        "import-unknown-column",
        {"in.jsonl": session_with(session={**SESSION["session"], "colour": "red"}).encode()},
        {},
        ["import", "in.jsonl"],
        "in.jsonl:1: \"session\" has unknown field 'colour'",
    ),
    (
        "import-unknown-mode",
        {"in.jsonl": session_with(session={**SESSION["session"], "mode": "party"}).encode()},
        {},
        ["import", "in.jsonl"],
        "mode must be one of chat, compare, blind, imported, bench, not 'party'",
    ),
    (
        "import-unknown-status",
        {"in.jsonl": session_with(turns=[{**TURN, "status": "done"}]).encode()},
        {},
        ["import", "in.jsonl"],
        "turns[0]: status must be one of",
    ),
    (
        "import-unknown-label",
        {
            "in.jsonl": session_with(
                turns=[TURN],
                ratings=[
                    {"id": "r", "turn_id": "t-bad", "annotator": "a", "label": "great", "created": "x", "current": 1}
                ],
            ).encode()
        },
        {},
        ["import", "in.jsonl"],
        "ratings[0]: label must be one of",
    ),
    (
        "import-unknown-turn-column",
        {"in.jsonl": session_with(turns=[{**TURN, "mood": 1}]).encode()},
        {},
        ["import", "in.jsonl"],
        "turns[0] has unknown field 'mood'",
    ),
    ("import-missing-file", {}, {}, ["import", "nope.jsonl"], "'nope.jsonl' does not exist"),
    (
        "import-bad-format-option",
        {"in.jsonl": b'{"conversations": ["a", "b"]}\n'},
        {},
        ["import", "in.jsonl", "--format", "csv"],
        "'csv' is not one of",
    ),
    (
        "export-missing-folder",
        {},
        {},
        ["export", "--format", "messages", "-o", "no/such/dir/out.jsonl"],
        "-o/--output no/such/dir/out.jsonl: the folder no/such/dir does not exist",
    ),
    (
        "export-onto-a-folder",
        {"out/keep": b""},
        {},
        ["export", "--format", "messages", "-o", "out"],
        "'--output': File 'out' is a directory. (see `limachat export --help`)",
    ),
    (
        "report-png-missing-folder",
        {},
        {},
        ["report", "--png", "nowhere/fig.png"],
        "--png nowhere/fig.png: the folder nowhere",
    ),
    (
        "report-csv-onto-a-folder",
        {"out/keep": b""},
        {},
        ["report", "--csv", "out"],
        "'--csv': File 'out' is a directory",
    ),
    ("app-port-too-high", {}, {}, ["app", "--port", "70000"], "'--port': 70000 is not in the range 1<=x<=65535"),
    ("app-port-zero", {}, {}, ["app", "--port", "0"], "'--port': 0 is not in the range"),
    ("serve-port-negative", {}, {}, ["serve", "--port", "-1"], "'--port': -1 is not in the range"),
    (
        "serve-unknown-host",
        {},
        {},
        ["serve", "--host", "no-such-host.invalid"],
        "--host 'no-such-host.invalid': not an address",
    ),
    ("app-bad-ipv6-host", {}, {}, ["app", "--host", "::zz"], "--host '::zz': not an address"),
    ("home-is-a-file", {"afile": b"x"}, {}, ["--home", "afile", "report"], "'--home': Directory 'afile' is a file"),
    ("toml-unknown-key", {"limachat.toml": b"[app]\ncolour = 'red'\n"}, {}, ["report"], "limachat.toml:2: app.colour"),
    ("toml-syntax", {"limachat.toml": b"[app\nport = 1\n"}, {}, ["report"], "limachat.toml"),
    (
        "toml-port-range",
        {"limachat.toml": b"[app]\nport = 99999\n"},
        {},
        ["report"],
        "limachat.toml:2: app.port: Input should be less than or equal to 65535",
    ),
    ("toml-not-utf8", {"limachat.toml": b"[app]\nhost = '\xff'\n"}, {}, ["report"], "limachat.toml"),
    ("env-port-not-a-number", {}, {"LIMACHAT_APP__PORT": "abc"}, ["report"], "LIMACHAT_APP__PORT: app.port"),
    ("env-unknown-setting", {}, {"LIMACHAT_COLOUR": "red"}, ["report"], "LIMACHAT_COLOUR: unknown setting"),
    ("env-unknown-preset", {}, {"LIMACHAT_SAMPLING__PRESET": "wild"}, ["report"], "wild"),
    (
        "auth-not-utf8",
        {"users.txt": b"ana:\xff\xfe\n"},
        {},
        ["app", "--auth", "users.txt"],
        "--auth: users.txt:1: not UTF-8",
    ),
    ("auth-empty", {"users.txt": b"# nobody yet\n"}, {}, ["app", "--auth", "users.txt"], "--auth: users.txt: no users"),
    (
        "auth-no-colon",
        {"users.txt": b"ana\n"},
        {},
        ["app", "--auth", "users.txt"],
        "--auth: users.txt:1: expected name:hash",
    ),
    ("users-add-bad-name", {}, {}, ["users", "add", "a:b", "--password-stdin"], "a user name needs text without ':'"),
    ("judge-unknown-mode", {}, {}, ["judge", "great"], "Invalid value for 'MODE': 'great' is not one of"),
    (
        "judge-prompt-version",
        {},
        {},
        ["judge", "label", "--prompt-version", "9"],
        "--prompt-version: label has versions 1, not 9",
    ),
    (
        "judge-unreachable",
        {},
        {},
        ["judge", "label", "--base-url", "http://127.0.0.1:9/v1"],
        "judge endpoint http://127.0.0.1:9/v1: cannot be reached",
    ),
    (
        "judge-concurrency-zero",
        {},
        {},
        ["judge", "score", "--concurrency", "0"],
        "'--concurrency': 0 is not in the range",
    ),
    ("select-too-many", {}, {}, ["select", "--name", "x", "--size", "5000"], "--size 5000: the filters pass 69 chains"),
    ("select-no-name", {}, {}, ["select", "--size", "5"], "Missing option '--name'"),
    (
        "revise-unknown-label",
        {},
        {},
        ["revise", "--labels", "fail,great"],
        "--labels: great is not one of fail, pass, excellent",
    ),
    (
        "revise-steps-without-rounds",
        {},
        {},
        ["revise", "--max-steps", "2"],
        "--max-steps: only with --rounds (they set its training)",
    ),
    (
        "revise-unreachable",
        {},
        {},
        ["revise", "--base-url", "http://127.0.0.1:9/v1"],
        "teacher endpoint http://127.0.0.1:9/v1: cannot be reached",
    ),
    (
        "export-unknown-selection",
        {},
        {},
        ["export", "--format", "lima", "-o", "out.jsonl", "--selection", "nope"],
        "no selection named 'nope' (saved: none yet)",
    ),
    (
        "export-score-out-of-range",
        {},
        {},
        ["export", "--format", "lima", "-o", "out.jsonl", "--min-score", "7"],
        "'--min-score': 7.0 is not in the range 0<=x<=5",
    ),
    (
        "queue-unknown",
        {},
        {},
        ["queue", "status", "ghost"],
        "no queue 'ghost'; create one first",
    ),
    (
        "queue-bad-name",
        {},
        {},
        ["queue", "create", "no spaces"],
        "queue name 'no spaces': use 1-64 letters, digits, '.', '-' or '_' (see `limachat queue create --help`)",
    ),
    (
        "study-split-without-annotators",
        {},
        {},
        ["study", "create", "s", "--checkpoints", "zero-shot,dialogue", "--raters-per-conversation", "2"],
        "raters per conversation: a whole number from 1 to the number of annotators (0), not 2",
    ),
    (
        "db-not-sqlite",
        {"data/limachat.db": b"these are my notes, not a database\n" * 10},
        {},
        ["report"],
        "limachat.db is not a SQLite database (left as it is",
    ),
    (
        "db-not-sqlite-import",
        {
            "data/limachat.db": b"these are my notes, not a database\n" * 10,
            "in.jsonl": b'{"conversations": ["a", "b"]}\n',
        },
        {},
        ["import", "in.jsonl"],
        "limachat.db is not a SQLite database",
    ),
    (
        "import-rating-without-id",
        {
            "in.jsonl": session_with(
                turns=[{**TURN, "role": "assistant"}], ratings=[{**RATING_ROW, "id": None}]
            ).encode()
        },
        {},
        ["import", "in.jsonl"],
        'in.jsonl:1: ratings[0] has no "id" (null)',
    ),
    (
        "import-rating-key-missing",
        {"in.jsonl": session_with(turns=[TURN], ratings=[{k: v for k, v in RATING_ROW.items() if k != "id"}]).encode()},
        {},
        ["import", "in.jsonl"],
        'in.jsonl:1: ratings[0] has no "id"',
    ),
    (
        "import-rating-of-no-turn",
        {"in.jsonl": session_with(turns=[TURN], ratings=[{**RATING_ROW, "turn_id": "t-gone"}]).encode()},
        {},
        ["import", "in.jsonl"],
        "in.jsonl:1: ratings[0]: turn_id 't-gone' is no turn of the record or the store",
    ),
    (
        "import-turn-of-another-session",
        {"in.jsonl": session_with(turns=[{**TURN, "session_id": "s-other"}]).encode()},
        {},
        ["import", "in.jsonl"],
        "in.jsonl:1: turns[0] belongs to session 's-other', not 's-bad'",
    ),
    (
        "import-text-with-escape",
        {"in.jsonl": b'{"conversations": ["a", "b"]}\n{"conversations": ["hi \\u001b[2J", "b"]}\n'},
        {},
        ["import", "in.jsonl"],
        "in.jsonl:2: turn 1 holds the control character U+001B at character 4",
    ),
    (
        "import-text-with-nul-in-a-session",
        {"in.jsonl": session_with(turns=[{**TURN, "content": "a\x00b"}]).encode()},
        {},
        ["import", "in.jsonl"],
        "in.jsonl:1: turns[0].content holds the control character U+0000",
    ),
    (
        "import-lone-surrogate",
        {"in.jsonl": b'{"messages": [{"role": "user", "content": "\\ud800"}]}\n'},
        {},
        ["import", "in.jsonl"],
        "in.jsonl:1: turn 1 holds a lone surrogate at character 1",
    ),
    (
        "import-alpaca-no-output",
        {"in.json": b'[{"instruction": "Say hi.", "input": "", "output": ""}]'},
        {},
        ["import", "in.json", "--format", "alpaca"],
        'in.json:1: "output" must be a non-empty string',
    ),
    (
        "import-openai-weight-on-user",
        {"in.jsonl": b'{"messages": [{"role": "user", "content": "q", "weight": 1}]}\n'},
        {},
        ["import", "in.jsonl"],
        'in.jsonl:1: message 1: "weight" is 0 or 1, on assistant messages only',
    ),
    (
        "import-oasst-two-roots",
        {
            "in.jsonl": b'{"message_id": "a", "parent_id": null, "role": "prompter", "text": "q", "message_tree_id": "t"}\n'
            b'{"message_id": "b", "parent_id": null, "role": "prompter", "text": "q", "message_tree_id": "t"}\n'
        },
        {},
        ["import", "in.jsonl"],
        "in.jsonl:1: a message tree has one root (parent_id null), this one has 2",
    ),
    (
        "import-oasst-unknown-parent",
        {
            "in.jsonl": b'{"message_id": "a", "parent_id": null, "role": "prompter", "text": "q"}\n'
            b'{"message_id": "b", "parent_id": "zz", "role": "assistant", "text": "r", "message_tree_id": "a"}\n'
        },
        {},
        ["import", "in.jsonl"],
        "in.jsonl:2: parent_id 'zz' is no message of its tree",
    ),
    (
        "import-oasst-not-alternating",
        {
            "in.jsonl": b'{"message_tree_id": "t", "prompt": {"message_id": "a", "role": "prompter", "text": "q", '
            b'"replies": [{"message_id": "b", "role": "prompter", "text": "again"}]}}\n'
        },
        {},
        ["import", "in.jsonl"],
        "in.jsonl:1: a prompter message cannot answer a prompter one (turns alternate)",
    ),
    (
        "import-preference-tie",
        {"in.jsonl": b'{"prompt": "q", "chosen": "same", "rejected": "same"}\n'},
        {},
        ["import", "in.jsonl"],
        'in.jsonl:1: "chosen" and "rejected" are the same reply: a tie is no pair',
    ),
    (
        "import-preference-prompt-ends-with-a-reply",
        {
            "in.jsonl": b'{"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}], '
            b'"chosen": "a", "rejected": "b"}\n'
        },
        {},
        ["import", "in.jsonl"],
        'in.jsonl:1: "prompt" must end with a user message',
    ),
    (
        "export-since-not-a-date",
        {},
        {},
        ["export", "--format", "messages", "-o", "out.jsonl", "--since", "yesterday"],
        "--since must be an ISO date or date/time (2026-12-01, 2026-12-01T09:30), not 'yesterday'",
    ),
]


@pytest.fixture(scope="module")
def seeded_db(tmp_path_factory) -> Path:
    """A database with real work in it: the bundled set imported, a chat rated."""
    path = tmp_path_factory.mktemp("seed") / "limachat.db"
    store = Store(path)
    import_file(store, bundled("train.jsonl"))
    sid = store.start_session("chat", annotator="ana")
    u = store.add_user_turn(sid, "q")
    a = store.begin_assistant_turn(sid, u, checkpoint="dialogue")
    store.finish_assistant_turn(a, "an answer")
    store.rate(a, "ana", "pass")
    store.close()
    return path


def state_of(path: Path):
    """What must not change: the file's bytes when it is not a database, else row counts and integrity."""
    if not path.exists():
        return None
    data = path.read_bytes()
    if not data.startswith(b"SQLite format 3"):
        return data
    conn = sqlite3.connect(path)
    counts = {
        t: conn.execute(f"select count(*) from {t}").fetchone()[0]
        for t in (
            "sessions",
            "turns",
            "ratings",
            "edits",
            "verdicts",
            "judgments",
            "rubrics",
            "selections",
            "embeddings",
        )
    }
    integrity = conn.execute("pragma integrity_check").fetchone()[0]
    conn.close()
    return counts, integrity


def run_cli(cwd: Path, args: list[str], env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LIMACHAT_")}
    return subprocess.run(
        [sys.executable, "-m", "limachat.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**base, "LIMACHAT_HOME": str(cwd / "data"), **env},
        input=stdin,
        timeout=120,
    )


def assert_one_clear_line(text: str, expected: str) -> None:
    lines = [line for line in text.strip().splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1, f"expected one line, got:\n{text}"
    assert "Traceback" not in text
    assert expected in lines[0], f"{expected!r} not in {lines[0]!r}"


def invoke_cli(cwd: Path, args: list[str], env: dict[str, str], monkeypatch) -> subprocess.CompletedProcess:
    """The `limachat` command in this process (click's runner), as `run_cli` runs it in its own: the same
    group, its error discipline and exit code, at a fraction of a process start and its imports."""
    from click.testing import CliRunner

    from limachat.cli import main

    monkeypatch.chdir(cwd)
    unset = {k: None for k in os.environ if k.startswith("LIMACHAT_")}
    result = CliRunner().invoke(main, args, env={**unset, "LIMACHAT_HOME": str(cwd / "data"), **env})
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exc_info
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def check_case(case, seeded_db, tmp_path, run) -> None:
    _, files, env, args, expected = case
    db = tmp_path / "data" / "limachat.db"
    db.parent.mkdir()
    db.write_bytes(seeded_db.read_bytes())
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    before = state_of(db)
    result = run(tmp_path, args, env)
    assert result.returncode != 0, result.stdout + result.stderr
    assert_one_clear_line(result.stderr, expected)
    assert state_of(db) == before, "the database changed"


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(case, seeded_db, tmp_path, monkeypatch):
    check_case(case, seeded_db, tmp_path, lambda cwd, args, env: invoke_cli(cwd, args, env, monkeypatch))


AS_A_PROCESS = [
    c
    for c in CLI_CASES
    if c[0] in ("import-second-line-bad", "app-port-too-high", "toml-syntax", "home-is-a-file", "db-not-sqlite")
]


@pytest.mark.parametrize("case", AS_A_PROCESS, ids=[c[0] for c in AS_A_PROCESS])
def test_cli_bad_input_as_a_process(case, seeded_db, tmp_path):
    """What a shell sees from `python -m limachat.cli`: the exit status, and the one line on stderr, for one case
    of each kind (a file's line, an option, the settings, the home, the database)."""
    check_case(case, seeded_db, tmp_path, run_cli)


def test_a_database_locked_past_the_busy_timeout(seeded_db, tmp_path):
    """Another process holds the write lock for longer than db_busy_timeout: the import says so, in one
    line, and leaves the file as it was."""
    db = tmp_path / "data" / "limachat.db"
    db.parent.mkdir()
    db.write_bytes(seeded_db.read_bytes())
    (tmp_path / "in.jsonl").write_text('{"conversations": ["a new question", "an answer"]}\n')
    before = state_of(db)
    locker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sqlite3, sys, time\n"
                "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                "c.execute('BEGIN EXCLUSIVE')\n"
                "print('locked', flush=True)\n"
                "time.sleep(8)\n"
            ),
            str(db),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout.readline().strip() == "locked"
        result = run_cli(tmp_path, ["import", "in.jsonl"], {"LIMACHAT_DB_BUSY_TIMEOUT": "1"})
    finally:
        locker.kill()
        locker.wait()
    assert result.returncode != 0
    assert_one_clear_line(result.stderr, "limachat.db")
    assert "locked" in result.stderr
    assert state_of(db) == before


def test_an_unexpected_error_is_logged_with_its_traceback_and_named_in_one_line(tmp_path):
    """An internal error (here: the home's logs folder made a file) ... the CLI still speaks one line.
    And a crash inside a command goes to <home>/logs/limachat.log with its traceback."""
    from click.testing import CliRunner

    from limachat import cli, context

    home = tmp_path / "home"
    home.mkdir()
    (home / "exports").mkdir()

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    original = context.store
    context.store = broken  # a stand-in for a bug: nothing a user does triggers one on purpose
    try:
        result = CliRunner().invoke(cli.main, ["--home", str(home), "report"])
    finally:
        context.store = original
    assert result.exit_code == 1
    log = home / "logs" / "limachat.log"
    assert_one_clear_line(
        result.output, f"internal error in limachat report (KeyError: 'a bug'); its traceback is in {log}"
    )
    assert "Traceback" in log.read_text() and "KeyError: 'a bug'" in log.read_text()


# -- the app's inputs ---------------------------------------------------------------------------------
@pytest.fixture
def deps(seeded_db, tmp_path):
    path = tmp_path / "app.db"
    path.write_bytes(seeded_db.read_bytes())
    url = "http://127.0.0.1:9/v1"  # never reached: every case here is refused before a model is asked
    d = Deps(
        Store(path),
        {
            "dialogue": Checkpoint(name="dialogue", model="dialogue", base_url=url),
            "zero-shot": Checkpoint(name="zero-shot", model="zero-shot", base_url=url),
        },
        Settings(home=tmp_path),
    )
    yield d
    d.store.close()


def drain(gen):
    async def go():
        return [item async for item in gen]

    return asyncio.run(go())


# (id, what is stored first (or None), the call, what the one line must contain)
APP_CASES = [
    (
        "chat-1mb-message",
        None,
        lambda d, st: drain(chat.send(d, chat.blank(), "word " * 200_000, "dialogue", "ana")),
        "This message has 1,000,000 characters; the limit is 100,000",
    ),
    (
        "chat-nul",
        None,
        lambda d, st: drain(chat.send(d, chat.blank(), "hello\x00world", "dialogue", "ana")),
        "control character U+0000 at character 6",
    ),
    (
        "chat-escape-sequence",
        None,
        lambda d, st: drain(chat.send(d, chat.blank(), "red \x1b[31mtext", "dialogue", "ana")),
        "control character U+001B at character 5",
    ),
    (
        "compare-bell",
        None,
        lambda d, st: drain(compare.send(d, compare.blank(), "ring\x07", "zero-shot", "dialogue", True, "ana")),
        "control character U+0007",
    ),
    (
        "compare-1mb",
        None,
        lambda d, st: drain(compare.send(d, compare.blank(), "x" * 1_000_000, "zero-shot", "dialogue", False, "ana")),
        "the limit is 100,000",
    ),
    (
        "edit-to-control",
        "exchange",
        lambda d, st: drain(chat.edit(d, st, 0, "new\x08text", "dialogue", "ana")),
        "control character U+0008",
    ),
    (
        "prompt-set-binary",
        None,
        lambda d, st: compare.prompt_set(_file(d, "set.jsonl", b"\x00\x01\x02\xff")),
        "set.jsonl:1: not UTF-8",
    ),
    (
        "prompt-set-nul",
        None,
        lambda d, st: compare.prompt_set(_file(d, "set.txt", b"a question\x00\n")),
        "set.txt:1: a NUL byte",
    ),
    ("prompt-set-empty", None, lambda d, st: compare.prompt_set(_file(d, "set.txt", b"\n\n")), "set.txt: no prompts"),
    (
        "prompt-set-array",
        None,
        lambda d, st: compare.prompt_set(_file(d, "set.jsonl", b'{"prompt": "ok"}\n{"prompt": 3}\n')),
        'set.jsonl:2: needs a "prompt" string',
    ),
    ("rate-without-name", "exchange", lambda d, st: chat.rate(d, st, 1, "Pass", None), "Enter your name"),
]


def _file(d: Deps, name: str, data: bytes) -> Path:
    path = d.settings.home / name
    path.write_bytes(data)
    return path


def _one_exchange(d: Deps) -> dict:
    """A stored chat exchange (a question and its reply) for the cases that act on one."""
    sid = d.store.start_session("chat")
    u = d.store.add_user_turn(sid, "q")
    a = d.store.begin_assistant_turn(sid, u, checkpoint="dialogue")
    d.store.finish_assistant_turn(a, "answer")
    return {"session": sid, "ids": [u, a]}


@pytest.mark.parametrize("case", APP_CASES, ids=[c[0] for c in APP_CASES])
def test_app_bad_input(case, deps):
    """The app's handlers refuse with a ValueError, which the page shows as one line (gr.Error) and
    which Gradio does not print as a traceback; nothing is stored."""
    _, setup, call, expected = case
    state = _one_exchange(deps) if setup == "exchange" else None
    before = state_of(deps.store.path)
    with pytest.raises(ValueError) as refused:
        call(deps, state)
    assert_one_clear_line(str(refused.value), expected)
    assert state_of(deps.store.path) == before


def test_a_port_already_taken_is_named_before_anything_starts(seeded_db, tmp_path):
    import socket

    db = tmp_path / "data" / "limachat.db"
    db.parent.mkdir()
    db.write_bytes(seeded_db.read_bytes())
    before = state_of(db)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(tmp_path, ["app", "--port", str(port)], {})
    assert result.returncode != 0
    assert_one_clear_line(result.stderr, f"app.host 127.0.0.1:{port}: the port is already in use")
    assert state_of(db) == before


def test_right_to_left_and_emoji_text_is_stored_as_written(deps):
    """Not bad input: Arabic and Hebrew (with a right-to-left mark), emoji and combining marks go in
    and come back byte for byte (no model needed: the user turn is stored before any request)."""
    text = "\u05e9\u05dc\u05d5\u05dd \u200f\u0645\u0631\u062d\u0628\u0627 \U0001f600 e\u0301"
    sid = deps.store.start_session("chat")
    u = deps.store.add_user_turn(sid, text)
    assert deps.store.turn(u)["content"] == text
    assert chat.current(deps, {"session": sid, "ids": [u]}, None).history[0]["content"] == text


def test_cases_cover_every_entry_point():
    kinds = {c[0].split("-")[0] for c in CLI_CASES} | {c[0].split("-")[0] for c in APP_CASES}
    assert {
        "import",
        "export",
        "report",
        "app",
        "serve",
        "home",
        "toml",
        "env",
        "auth",
        "users",
        "db",
        "chat",
        "compare",
        "edit",
        "prompt",
        "rate",
        "judge",
        "select",
        "revise",
        "bench",
    } <= kinds
    assert len(CLI_CASES) + len(APP_CASES) + 2 >= 30


def test_a_home_on_a_read_only_disk_is_read_and_a_write_is_one_line(seeded_db, tmp_path):
    """An archived home on a read-only disk (a tmpfs remounted read-only, in a mount namespace of this
    test's own): report, export elsewhere and a study's report work; an import is refused in one line."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "limachat.db").write_bytes(seeded_db.read_bytes())
    store = Store(home / "limachat.db")
    store.create_study(
        "archived",
        prompt_set="p",
        prompts=[{"id": "p1", "prompt": "Name a bird."}],
        checkpoints=["zero-shot", "dialogue"],
        conversations=1,
        turns=1,
        blind=True,
        annotators=["ana"],
        seed=3,
    )
    sid = store.start_session("blind", annotator="ana", study="archived", slot=0, prompt="p1", prompt_set="p")
    for lane, ck in (("a", "zero-shot"), ("b", "dialogue")):
        u = store.add_user_turn(sid, "Name a bird.", lane=lane)
        t = store.begin_assistant_turn(sid, u, checkpoint=ck, lane=lane)
        store.finish_assistant_turn(t, "A robin." if lane == "a" else "A wren.")
        store.rate(t, "ana", "pass" if lane == "a" else "excellent")
    store.close()
    (tmp_path / "in.jsonl").write_text('{"conversations": ["a", "b"]}\n')
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    cli = f"{sys.executable} -m limachat.cli"
    steps = {
        "report": "report",
        "export": f"export --format preference -o {out}/pairs.jsonl",
        "study": f"report --study archived --html {out}/study.html",
        "import": f"import {tmp_path}/in.jsonl",
    }
    script = "\n".join(
        [
            f"mount -t tmpfs -o size=64m tmpfs {disk}",
            f"cp -a {home} {disk}/home",
            f"mount -o remount,ro {disk}",
            *(
                f"if LIMACHAT_HOME={disk}/home {cli} {args} > {out}/{name}.out 2> {out}/{name}.err; "
                f"then echo 0; else echo $?; fi > {out}/{name}.rc"
                for name, args in steps.items()
            ),
        ]
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIMACHAT_")}
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-ec", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    rc = {name: int((out / f"{name}.rc").read_text()) for name in steps}
    err = {name: (out / f"{name}.err").read_text() for name in steps}
    assert rc == {"report": 0, "export": 0, "study": 0, "import": 1}, err
    assert "| dialogue | 2 |" in (out / "report.out").read_text(), (out / "report.out").read_text()
    assert "pairs: " in (out / "export.out").read_text() and (out / "pairs.jsonl").is_file()
    assert "<html" in (out / "study.html").read_text()[:500].lower()
    assert_one_clear_line(
        err["import"], "limachat.db is on a read-only disk: it can be read (report, export), not written"
    )


def test_files_other_tools_wrote_with_a_bom_and_crlf_are_read_as_they_mean(tmp_path, monkeypatch):
    """Notepad's UTF-8 (a byte-order mark) and Windows line ends in every file a user hands limachat."""
    from limachat.demo.users import read_users
    from limachat.dialogues.formats import load_prompts
    from limachat.settings import load_settings

    bom = b"\xef\xbb\xbf"
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(bom + b"Plan my week.\r\nExplain DNS.\r\n")
    assert load_prompts(prompts) == [{"id": "p01", "prompt": "Plan my week."}, {"id": "p02", "prompt": "Explain DNS."}]
    toml = tmp_path / "limachat.toml"
    toml.write_bytes(bom + b"[app]\r\nport = 7861\r\n")
    for key in [k for k in os.environ if k.startswith("LIMACHAT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("LIMACHAT_CONFIG", str(toml))
    assert load_settings().app.port == 7861
    users = tmp_path / "users.txt"
    users.write_bytes(bom + b"ana:secret\r\n")
    assert list(read_users(users)) == ["ana"]
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_bytes(bom + b'{"conversations": ["a", "b"]}\r\n{"conversations": ["c", "d"]}\r\n')
    store = Store(tmp_path / "x.db")
    assert import_file(store, jsonl).sessions_added == 2
    assert sorted(t["content"] for t in store.chain_turns()) == ["a", "b", "c", "d"]  # no BOM in the first
