"""The docs against the code: every `limachat ...` command shown in README.md and docs/ runs with
`--help` and knows the flags shown with it; every config key shown exists in the settings (each TOML
example loads, its commented-out lines too); every repository path named exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import REPO

from limachat.cli import main

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
UPSTREAM = {
    "kcenter_greedy.py",
    "punica_cpu.py",
    "sampling_params.py",
    "cpu_worker.py",
    "gen_model_answer.py",  # FastChat's llm_judge scripts (docs/bench.md)
    "show_result.py",
    "compute_agreement.py",
}  # files of other projects the docs cite by name
TOP = {p.name for p in REPO.iterdir()} - {"data", ".venv", ".git"}  # a path starting here names the repository


def snippets() -> list[tuple[str, str]]:
    """(where, text) of every inline code span and every line of a code block, per doc."""
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for block in re.findall(r"```[^\n]*\n(.*?)```", text, re.S):
            out += [(doc.name, line) for line in block.splitlines()]
        out += [(doc.name, span) for span in re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))]
    return out


def commands() -> list[tuple[str, str]]:
    """Each `limachat <command> ...` shown, up to its comment."""
    found = []
    for where, text in snippets():
        for m in re.finditer(r"(?:^|[\s(])limachat( [a-z][^#]*)", text):
            found.append((where, "limachat" + m[1].split("  #")[0].rstrip()))
    return sorted(set(found))


def test_the_docs_show_commands():
    assert len(commands()) > 30


@pytest.mark.parametrize(("where", "shown"), commands())
def test_each_command_shown_runs_with_help_and_knows_its_flags(where, shown):
    words = shown.split()[1:]
    command, path = main, []
    while words and isinstance(command, click.Group) and words[0] in command.commands:
        command = command.commands[words[0]]
        path.append(words.pop(0))
    assert path, f"{where}: `{shown}`: {shown.split()[1]!r} is no limachat command"
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output, f"{where}: `{shown}`: {result.output}"
    known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    unknown = [w for w in words if w.startswith("--") and w.split("=")[0] not in known]
    assert not unknown, f"{where}: `{shown}`: `limachat {' '.join(path)}` has no {', '.join(unknown)}"


def _key_exists(model, parts: list[str]) -> bool:
    from pydantic import BaseModel

    for part in parts:
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return False
        annotation = fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if model is None:
            return True  # a value, or a table of free keys (presets, extra)
    return True


def test_each_config_key_named_exists():
    from limachat.settings import Settings

    sections = set(Settings.model_fields)
    named = {
        (where, m[1])
        for where, text in snippets()
        for m in [re.fullmatch(r"\[?([a-z_]+(?:\.[a-z_]+)+)\]?", text.strip())]
        if m and m[1].split(".")[0] in sections
    }
    assert len(named) >= 4
    missing = [f"{where}: {key}" for where, key in sorted(named) if not _key_exists(Settings, key.split("."))]
    assert not missing, f"config keys the settings do not have: {missing}"


def test_each_toml_example_loads_with_its_commented_keys(tmp_path, clean_env, monkeypatch):
    from limachat.settings import load_settings

    blocks = [(doc.name, block) for doc in DOCS for block in re.findall(r"```toml\n(.*?)```", doc.read_text(), re.S)]
    assert blocks
    for where, block in blocks:
        toml = re.sub(r"(?m)^# (\w+ = )", r"\1", block)  # a commented-out key is a key a user may set
        (tmp_path / "limachat.toml").write_text(toml)
        monkeypatch.setenv("LIMACHAT_CONFIG", str(tmp_path / "limachat.toml"))
        try:
            load_settings()
        except Exception as e:  # noqa: BLE001 - reported with the doc it came from
            pytest.fail(f"{where}: a TOML example does not load: {e}\n{toml}")


def test_each_repository_path_named_exists():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    files = {Path(f).name for f in tracked}
    named = set()
    for where, text in snippets():
        for token in re.findall(r"[\w.\-]+(?:/[\w.\-]*)*", text):
            first = token.split("/")[0]
            if "/" in token and first in TOP:
                named.add((where, token.rstrip(".")))
            elif re.fullmatch(r"[\w\-]+\.py", token) and token not in UPSTREAM:
                named.add((where, token))
    assert len(named) > 20
    missing = [f"{where}: {p}" for where, p in sorted(named) if not ((REPO / p).exists() if "/" in p else p in files)]
    assert not missing, f"paths the repository does not have: {missing}"


# A timing as the README writes it: "34 s", "5 min 35 s", "12 tokens/s", "0.4 s".
TIMING = re.compile(r"\b\d[\d,.]*(?: min(?: \d+ s)?| s| ms| tokens/s| minutes| seconds)(?![\w/])")


def test_every_timing_the_readme_quotes_is_one_benchmarks_md_holds():
    """A figure in the README is true on the machine `make bench` measured, with its date, or it is not there."""
    readme, bench = (REPO / "README.md").read_text(), (REPO / "BENCHMARKS.md").read_text()
    figures = TIMING.findall(readme)
    assert len(figures) >= 3, figures  # the README does quote its timings
    missing = [f for f in figures if f not in bench]
    assert not missing, f"README.md quotes {missing}, which BENCHMARKS.md does not hold"
    assert "(BENCHMARKS.md)" in readme, "the README points to where its figures come from"
