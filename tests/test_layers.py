"""The import graph holds to docs/architecture.md: every edge between layers is listed there, every
listed edge is used, and no module imports itself back through others (no cycles)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from conftest import REPO

FOLDERS = {
    "limachat": "limachat",
    "serve": "limachat.serve",
    "dialogues": "limachat.dialogues",
    "train": "limachat.train",
    "demo": "limachat.demo",
    "curate": "limachat.curate",
}
# A module's layer: the first prefix that matches, so a module named here wins over its folder.
LAYERS = [
    ("limachat.cli", "cli"),
    ("limachat.commands", "commands"),
    ("limachat.context", "context"),
    ("limachat.rounds", "rounds"),
    ("limachat.ablate", "rounds"),
    ("limachat.bench_answer", "rounds"),
    ("limachat.replies", "replies"),
    ("limachat.followups", "followups"),
    ("limachat.settings", "settings"),
    ("limachat.serve.base", "base"),
    ("limachat.demo", "demo"),
    ("limachat.curate", "curate"),
    ("limachat.train", "train"),
    ("limachat.serve", "serve"),
    ("limachat.dialogues", "dialogues"),
    ("limachat.layout", "core"),
    ("limachat.jobs", "core"),
    ("limachat.logs", "core"),
    ("limachat.procs", "core"),
    ("limachat.options", "context"),
]


def modules() -> dict[str, Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            out[".".join((package, *parts)).removesuffix(".__init__")] = path
    return out


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Each module's limachat imports, resolved to modules (`from limachat.x import y` is `limachat.x.y`
    when y is a module), at the top of the file or inside a function alike."""
    out = defaultdict(set)
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "limachat":
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    out[name].add(full if full in mods else node.module)
            elif isinstance(node, ast.Import):
                out[name] |= {a.name for a in node.names if a.name.split(".")[0] == "limachat"}
        out[name].discard(name)
    return out


def layer(module: str) -> str:
    for prefix, name in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return name
    raise AssertionError(f"{module} is in no layer of tests/test_layers.py (and docs/architecture.md)")


def documented() -> set[tuple[str, str]]:
    text = (REPO / "docs" / "architecture.md").read_text()
    block = text.split("<!-- layers: begin -->")[1].split("<!-- layers: end -->")[0]
    edges = set()
    for line in block.strip().splitlines():
        m = re.fullmatch(r"- (\w+) → (.+)", line.strip())
        assert m, f"docs/architecture.md: not a layer line: {line!r}"
        edges |= {(m[1], to.strip()) for to in m[2].split(",") if to.strip() != "(nothing)"}
    return edges


def test_the_imports_are_exactly_the_layers_in_the_docs():
    mods = modules()
    used: dict[tuple[str, str], list[str]] = defaultdict(list)
    for src, targets in imports(mods).items():
        for dst in targets:
            a, b = layer(src), layer(dst)
            if a != b:
                used[(a, b)].append(f"{src} -> {dst}")
    allowed = documented()
    undeclared = {edge: where for edge, where in used.items() if edge not in allowed}
    assert not undeclared, f"imports docs/architecture.md does not allow: {undeclared}"
    unused = allowed - set(used)
    assert not unused, f"docs/architecture.md allows edges no module uses (delete them): {sorted(unused)}"


def test_no_module_imports_itself_back():
    graph = imports(modules())
    seen, path = set(), []

    def visit(m: str) -> None:
        if m in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(m) :] + [m]))
        if m in seen:
            return
        path.append(m)
        for n in sorted(graph.get(m, ())):
            visit(n)
        path.pop()
        seen.add(m)

    for m in sorted(graph):
        visit(m)


def test_no_command_module_imports_the_cli():
    graph = imports(modules())
    assert sorted(m for m, targets in graph.items() if "limachat.cli" in targets) == []


def test_typed_settings_do_not_load_the_module_that_patches_vllm():
    """The settings share names with the plugin through serve/plugin_env.py, never through the patches."""
    done = subprocess.run(
        [sys.executable, "-c", "import sys, limachat.settings; print('limachat.serve.vllm_plugin' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "False"
