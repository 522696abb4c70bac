"""Import of conversation files into the store, and the full-fidelity sessions format.

Formats (JSON Lines, one record per line, or one JSON array of records; docs/data-formats.md):
- lima:       {"conversations": ["user", "assistant", ...], "source": "..."}  (LIMA's release)
- messages:   {"messages": [{"role": "user", "content": "..."}, ...]}  (TRL; OpenAI's fine-tuning
              files, a system message and per-message "weight" kept)
- sharegpt:   {"conversations": [{"from": "human", "value": "..."}, ...]}
- alpaca:     {"instruction": "...", "input": "...", "output": "..."}  (Alpaca, AlpaGasus)
- oasst:      OpenAssistant's message trees: flat messages (message_id, parent_id, role, text, rank),
              or a nested tree export ({"message_tree_id", "prompt": {..., "replies": [...]}})
- preference: {"prompt": [...], "chosen": [...], "rejected": [...]}  (TRL; a compare-shaped session)
- sessions:   {"format": "limachat.session/1", "session": {...}, "turns": [...], ...}

Imported conversations get ids derived from their content, so importing the same file twice adds
nothing; sessions keep their own ids and merge the same way. A UTF-8 byte-order mark and CRLF line
ends are read as the tools that write them mean them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from limachat.dialogues.store import Store
from limachat.dialogues.values import check_text

SESSION_FORMAT = "limachat.session/1"
FORMATS = ("lima", "messages", "sharegpt", "alpaca", "oasst", "preference", "sessions")
OASST_ROLES = {"prompter": "user", "assistant": "assistant"}
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "system": "system",
}


class FormatError(ValueError):
    """`FILE:LINE: what is wrong`."""


@dataclass
class ImportReport:
    format: str
    sessions_added: int = 0
    sessions_present: int = 0  # already in the store: skipped (or merged, for the sessions format)
    turns_added: int = 0
    bad: list[str] = field(default_factory=list)  # "FILE:LINE: ..." for each skipped line
    warnings: list[str] = field(default_factory=list)  # e.g. conversations ending in a user turn

    def summary(self) -> str:
        parts = [f"{self.sessions_added} conversations added", f"{self.turns_added} turns"]
        if self.sessions_present:
            parts.append(f"{self.sessions_present} already present")
        if self.bad:
            parts.append(f"{len(self.bad)} bad lines skipped")
        if self.warnings:
            parts.append(f"{len(self.warnings)} warnings")
        return f"{self.format}: " + ", ".join(parts)


def detect_format(record: dict[str, Any]) -> str | None:
    if record.get("format") == SESSION_FORMAT:
        return "sessions"
    if {"prompt", "chosen", "rejected"} <= set(record):
        return "preference"
    if "message_tree_id" in record and isinstance(record.get("prompt"), dict) or "message_id" in record:
        return "oasst"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if isinstance(record.get("messages"), list):
        return "messages"
    conv = record.get("conversations")
    if isinstance(conv, list) and conv:
        return "sharegpt" if isinstance(conv[0], dict) else "lima"
    return None


def conversation_pairs(record: dict[str, Any], fmt: str) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """(role, text) pairs and session meta of one record; raises ValueError saying what is wrong."""
    meta: dict[str, Any] = {}
    weights: list = []
    if fmt == "alpaca":
        for key in ("instruction", "output"):
            if not isinstance(record.get(key), str) or not record[key].strip():
                raise ValueError(f'"{key}" must be a non-empty string')
        extra = record.get("input", "")
        if not isinstance(extra, str):
            raise ValueError('"input" must be a string')
        question = record["instruction"].strip() + (f"\n\n{extra.strip()}" if extra.strip() else "")
        pairs = [("user", question), ("assistant", record["output"])]
        meta["source"] = "alpaca"
    elif fmt == "lima":
        conv = record.get("conversations")
        if not isinstance(conv, list) or not all(isinstance(t, str) for t in conv):
            raise ValueError('"conversations" must be a list of strings')
        pairs = [("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(conv)]
        if "source" in record:
            meta["source"] = record["source"]
    elif fmt == "messages":
        msgs = record.get("messages")
        if not isinstance(msgs, list):
            raise ValueError('"messages" must be a list')
        pairs = []
        for i, m in enumerate(msgs):
            if (
                not isinstance(m, dict)
                or not isinstance(m.get("content"), str)
                or m.get("role") not in ("system", "user", "assistant")
            ):
                raise ValueError(f'message {i + 1} needs "role" (system, user or assistant) and string "content"')
            if "weight" in m and (m["role"] != "assistant" or m["weight"] not in (0, 1)):
                raise ValueError(f'message {i + 1}: "weight" is 0 or 1, on assistant messages only (OpenAI\'s rule)')
            pairs.append((m["role"], m["content"]))
            weights.append(m.get("weight"))
    else:
        conv = record.get("conversations")
        if not isinstance(conv, list):
            raise ValueError('"conversations" must be a list')
        pairs = []
        for i, m in enumerate(conv):
            role = SHAREGPT_ROLES.get(str(m.get("from", "")).lower()) if isinstance(m, dict) else None
            if role is None or not isinstance(m.get("value"), str):
                raise ValueError(f'turn {i + 1} needs "from" ({", ".join(SHAREGPT_ROLES)}) and string "value"')
            pairs.append((role, m["value"]))
    if pairs and pairs[0][0] == "system":
        meta["system"] = pairs.pop(0)[1]
        weights = weights[1:]
    if any(w is not None for w in weights):
        meta["weights"] = weights  # per turn; the messages export writes them back
    if not pairs:
        raise ValueError("the conversation is empty")
    for i, (role, text) in enumerate(pairs):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(
                f"turn {i + 1} is {role!r} where {expected!r} belongs (turns alternate, starting with the user)"
            )
        if not text.strip():
            raise ValueError(f"turn {i + 1} is empty")
        check_text(text, f"turn {i + 1}")
    if "system" in meta:
        check_text(meta["system"], "the system message")
    return pairs, meta


def chain_pairs(record: Any, where: str, refusal: str) -> list[tuple[str, str]]:
    """The (role, text) pairs of one conversation record of a chain format (lima, messages, sharegpt,
    alpaca); FormatError "WHERE: REFUSAL" for anything else, "WHERE: what is wrong" for a bad one."""
    fmt = detect_format(record) if isinstance(record, dict) else None
    if fmt is None or fmt in ("oasst", "preference", "sessions"):
        raise FormatError(f"{where}: {refusal}")
    try:
        return conversation_pairs(record, fmt)[0]
    except ValueError as e:
        raise FormatError(f"{where}: {e}") from None


def preference_parts(record: dict[str, Any]) -> tuple[list[tuple[str, str]], dict[str, Any], str, str, str]:
    """(prompt pairs, meta, chosen, rejected, annotator) of a preference row, conversational (lists of
    messages) or standard (strings); ValueError saying what is wrong."""
    prompt = record.get("prompt")
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise ValueError('"prompt" must be a string or a non-empty list of messages')
    pairs, meta = conversation_pairs({"messages": prompt}, "messages")
    if pairs[-1][0] != "user":
        raise ValueError('"prompt" must end with a user message')
    replies = []
    for key in ("chosen", "rejected"):
        value = record.get(key)
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
            if value[0].get("role") != "assistant" or not isinstance(value[0].get("content"), str):
                raise ValueError(f'"{key}" must be one assistant message with string "content"')
            value = value[0]["content"]
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f'"{key}" must be a reply: a string or a list of one assistant message')
        replies.append(check_text(value, f'"{key}"'))
    if replies[0] == replies[1]:
        raise ValueError('"chosen" and "rejected" are the same reply: a tie is no pair')
    who = ((record.get("limachat") or {}).get("annotators") or [{}])[0]
    annotator = who.get("name") if isinstance(who, dict) and isinstance(who.get("name"), str) else "imported"
    return pairs, meta, replies[0], replies[1], annotator


def oasst_nodes(messages: list[tuple[int, dict[str, Any]]]) -> tuple[str, list[dict[str, Any]], int]:
    """(tree id, nodes parents first, deleted messages left out) of one OpenAssistant tree, from its
    (line, message) pairs; ValueError("LINE: what") naming the message's line."""
    by_id: dict[str, tuple[int, dict]] = {}
    for number, m in messages:
        mid = m.get("message_id")
        if not isinstance(mid, str) or not mid:
            raise ValueError(f'{number}: "message_id" must be a non-empty string')
        if mid in by_id:
            raise ValueError(f"{number}: message {mid!r} appears twice (also line {by_id[mid][0]})")
        by_id[mid] = (number, m)
    roots = [mid for mid, (_, m) in by_id.items() if m.get("parent_id") is None]
    if len(roots) != 1:
        raise ValueError(f"{messages[0][0]}: a message tree has one root (parent_id null), this one has {len(roots)}")
    children: dict[str, list[str]] = {}
    for mid, (number, m) in by_id.items():
        parent = m.get("parent_id")
        if parent is not None and parent not in by_id:
            raise ValueError(f"{number}: parent_id {parent!r} is no message of its tree")
        children.setdefault(parent, []).append(mid)
    for kids in children.values():  # siblings best rank first, then in file order
        kids.sort(key=lambda k: (not isinstance(by_id[k][1].get("rank"), int), by_id[k][1].get("rank") or 0))
    nodes, deleted, todo = [], 0, [(roots[0], None)]
    while todo:
        mid, parent_role = todo.pop(0)
        number, m = by_id[mid]
        if m.get("deleted"):
            deleted += 1  # and its replies with it
            continue
        role = OASST_ROLES.get(m.get("role"))
        if role is None:
            raise ValueError(f'{number}: "role" must be prompter or assistant, not {m.get("role")!r}')
        if role == parent_role or (parent_role is None and role != "user"):
            raise ValueError(f"{number}: a {m['role']} message cannot answer a {m['role']} one (turns alternate)")
        if not isinstance(m.get("text"), str) or not m["text"].strip():
            raise ValueError(f'{number}: "text" must be a non-empty string')
        rank = m.get("rank")
        if rank is not None and (not isinstance(rank, int) or rank < 0):
            raise ValueError(f'{number}: "rank" must be a whole number from 0 (best), not {rank!r}')
        check_text(m["text"], f"{number}: text")
        nodes.append({"key": mid, "parent": m.get("parent_id"), "role": role, "text": m["text"], "rank": rank})
        todo += [(c, role) for c in children.get(mid, [])]
    tree = messages[0][1].get("message_tree_id") or roots[0]
    return str(tree), nodes, deleted


def oasst_flatten(tree: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages of a nested OpenAssistant tree export, each with its parent_id."""
    out, todo = [], [(tree.get("prompt"), None)]
    while todo:
        m, parent = todo.pop(0)
        if not isinstance(m, dict):
            raise ValueError('a tree\'s "prompt" and "replies" must be message objects')
        replies = m.get("replies") or []
        if not isinstance(replies, list):
            raise ValueError('"replies" must be a list')
        out.append({**{k: v for k, v in m.items() if k != "replies"}, "parent_id": parent})
        todo += [(r, m.get("message_id")) for r in replies]
    return out


BOM = b"\xef\xbb\xbf"


def jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(line number, record or None, what is wrong or None) per non-blank line, or per element of a file
    that is one JSON array (Alpaca's, ShareGPT dumps)."""
    with path.open("rb") as f:
        head = f.read(4096).removeprefix(BOM).lstrip()
    if head.startswith(b"["):
        yield from _array_records(path)
        return
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            if number == 1:
                raw = raw.removeprefix(BOM)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield (
                    number,
                    None,
                    f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); save the file as UTF-8",
                )
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                hint = (
                    "; this looks like one JSON document: JSON Lines has one object per line"
                    if line.strip() in ("[", "{")
                    else ""
                )
                yield number, None, f"not valid JSON ({e.msg} at column {e.colno}){hint}"
                continue
            if not isinstance(record, dict):
                hint = " (a JSON array? write one object per line)" if isinstance(record, list) else ""
                yield number, None, f"each line must be a JSON object{hint}"
                continue
            yield number, record, None


def _array_records(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """The elements of a file holding one JSON array, each with the line it starts on."""
    data = path.read_bytes().removeprefix(BOM)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        yield line, None, f"not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as UTF-8"
        return
    decoder, i = json.JSONDecoder(), text.index("[") + 1
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text) or text[i] == "]":
            return
        line = text.count("\n", 0, i) + 1
        try:
            record, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            yield e.lineno, None, f"not valid JSON ({e.msg} at column {e.colno})"
            return
        yield (line, record, None) if isinstance(record, dict) else (line, None, "each element must be a JSON object")


def import_file(store: Store, path: Path, fmt: str | None = None, *, skip_bad: bool = False) -> ImportReport:
    """Import a JSONL file. Without skip_bad the first bad line raises FormatError and nothing
    of the file is written; with it, bad lines are counted in the report and the rest goes in."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such file")
    if fmt is not None and fmt not in FORMATS:
        raise FormatError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    records = list(jsonl_records(path))  # read (and checked for UTF-8) before the database is touched
    if not records:
        raise FormatError(f"{path}: empty (no JSON lines)")
    report = ImportReport(format=fmt or "?")

    def bad(where: str, problem: str) -> None:
        if not skip_bad:
            raise FormatError(f"{where}: {problem}")
        report.bad.append(f"{where}: {problem}")

    def run(db) -> None:
        flat: list[tuple[int, dict]] = []  # OpenAssistant messages, one per line: gathered into trees below
        for number, record, problem in records:
            if problem is None:
                line_fmt = fmt or detect_format(record)
                if fmt is None and report.format == "?":
                    report.format = line_fmt or "?"
                if line_fmt is None:
                    problem = "not a known format (" + ", ".join(f for f in FORMATS) + ")"
                elif line_fmt == "oasst" and not isinstance(record.get("prompt"), dict):
                    flat.append((number, record))
                    continue
                else:
                    try:
                        with db.atomic():  # a savepoint: a line that fails half-way leaves nothing behind
                            _import_line(store, record, line_fmt, path, number, report)
                    except (ValueError, KeyError, TypeError, sqlite3.IntegrityError) as e:
                        problem = str(e) if not isinstance(e, KeyError) else f"missing field {e}"
            if problem is not None:
                bad(f"{path}:{number}", problem)
        for tree in _trees(flat):
            try:
                with db.atomic():
                    _import_tree(store, tree, path, report)
            except ValueError as e:
                number, _, problem = str(e).partition(": ")
                bad(f"{path}:{number}", problem)

    store.transaction(run)
    return report


def _import_line(store: Store, record: dict, fmt: str, path: Path, number: int, report: ImportReport) -> None:
    if fmt == "sessions":
        present, added = store.merge_session(record)
        report.turns_added += added
        report.sessions_present += present
        report.sessions_added += not present
        return
    if fmt == "oasst":  # a nested tree export, one tree per line
        try:
            _import_tree(store, [(number, m) for m in oasst_flatten(record)], path, report)
        except ValueError as e:  # "LINE: what": every message of the tree is on this line
            head, _, rest = str(e).partition(": ")
            raise ValueError(rest if head.isdigit() else str(e)) from None
        return
    if fmt == "preference":
        pairs, meta, chosen, rejected, annotator = preference_parts(record)
        added = store.import_pair(pairs, meta, chosen, rejected, annotator, path.name, number)
        report.sessions_added += added is not None
        report.sessions_present += added is None
        report.turns_added += added or 0
        return
    pairs, meta = conversation_pairs(record, fmt)
    added = store.import_conversation(pairs, meta, fmt, path.name, number)
    if added is None:
        report.sessions_present += 1
        return
    if pairs[-1][0] == "user":
        report.warnings.append(f"{path}:{number}: ends with a user turn (kept; it has no answer to train on)")
    report.sessions_added += 1
    report.turns_added += added


def _trees(flat: list[tuple[int, dict]]) -> list[list[tuple[int, dict]]]:
    """Flat OpenAssistant messages grouped by the root their parent links lead to, in file order."""
    parent = {m.get("message_id"): m.get("parent_id") for _, m in flat}
    groups: dict[str, list[tuple[int, dict]]] = {}
    for number, m in flat:
        node, seen = m.get("message_id"), set()
        while parent.get(node) is not None and parent[node] in parent and node not in seen:
            seen.add(node)
            node = parent[node]
        groups.setdefault(str(m.get("message_tree_id") or node), []).append((number, m))
    return list(groups.values())


def _import_tree(store: Store, messages: list[tuple[int, dict]], path: Path, report: ImportReport) -> None:
    tree, nodes, deleted = oasst_nodes(messages)
    added = store.import_tree("oasst", tree, nodes, {"source": "oasst", "tree": tree}, path.name, messages[0][0])
    if deleted:
        report.warnings.append(f"{path}:{messages[0][0]}: {deleted} deleted messages left out, with their replies")
    if added is None:
        report.sessions_present += 1
        return
    report.sessions_added += 1
    report.turns_added += added


def session_records(store: Store) -> Iterator[dict[str, Any]]:
    """Each session with its whole turn tree, ratings (with history), gold edits and verdicts."""
    for session, parts in store.dump():
        yield {"format": SESSION_FORMAT, "session": session, **parts}


# A scripted prompt-set line: "turns", the later user turns, sent in order after the opening prompt;
# "replies", a reference reply to each user turn but the last (the shared history of a study whose
# rule is "reference").
SCRIPTED = ("turns", "replies")


def _texts(value: Any, where: str, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise FormatError(f'{where}: "{key}" must be a list of non-empty strings')
    return value


def _question(record: dict[str, Any], where: str) -> dict[str, Any]:
    """A line in FastChat's question layout (MT-Bench's `question.jsonl`) as a prompt-set item: its first
    turn opens, the later ones are the scripted follow-ups; the record itself is kept for `limachat bench`."""
    qid = record.get("question_id")
    if qid is None or isinstance(qid, bool) or not isinstance(qid, (int, str)) or not str(qid).strip():
        raise FormatError(f'{where}: a question needs a "question_id" (a number or a string)')
    turns = record.get("turns")
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
        raise FormatError(f'{where}: "turns" must be a non-empty list of non-empty strings')
    category = record.get("category", "general")
    if not isinstance(category, str) or not category.strip():
        raise FormatError(f'{where}: "category" must be a non-empty string')
    reference = record.get("reference")
    if reference is not None and (not isinstance(reference, list) or not all(isinstance(r, str) for r in reference)):
        raise FormatError(f'{where}: "reference" must be a list of strings, one per turn')
    item = {"id": str(qid), "prompt": turns[0], "category": category, "record": record}
    if len(turns) > 1:
        item["turns"] = turns[1:]
    if reference:
        item["reference"] = reference
    return item


def load_prompts(path: Path) -> list[dict[str, Any]]:
    """A prompt set: JSONL lines with "prompt" (and optional "id", "category", "turns" and "replies": see
    SCRIPTED), lines in FastChat's question layout ("question_id", "category", "turns", optional
    "reference": MT-Bench's question file), or plain text, one prompt a line. Ids are unique."""
    path = Path(path)
    prompts: list[dict[str, Any]] = []
    lines: dict[str, int] = {}
    try:
        data = path.read_bytes().removeprefix(BOM)
    except OSError as e:
        raise FormatError(f"{path}: {e.strerror}") from None
    for number, raw in enumerate(data.splitlines(), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise FormatError(
                f"{path}:{number}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
            ) from None
        if "\x00" in line:
            raise FormatError(f"{path}:{number}: a NUL byte: this is not a text file")
        if not line.strip():
            continue
        where = f"{path}:{number}"
        if line.lstrip().startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise FormatError(f"{where}: not valid JSON ({e.msg})") from None
            if isinstance(record, dict) and "prompt" not in record and ("turns" in record or "question_id" in record):
                item = _question(record, where)
            elif (
                not isinstance(record, dict)
                or not isinstance(record.get("prompt"), str)
                or not record["prompt"].strip()
            ):
                raise FormatError(f'{where}: needs a "prompt" string (or "question_id" and "turns", as FastChat)')
            else:
                item = {"id": str(record.get("id", f"p{len(prompts) + 1:02d}")), "prompt": record["prompt"]}
                if isinstance(record.get("category"), str) and record["category"].strip():
                    item["category"] = record["category"]
                for key in SCRIPTED:
                    if key in record:
                        item[key] = _texts(record[key], where, key)
        else:
            item = {"id": f"p{len(prompts) + 1:02d}", "prompt": line.strip()}
        if item["id"] in lines:
            raise FormatError(f"{where}: id {item['id']!r} again (first on line {lines[item['id']]})")
        lines[item["id"]] = number
        prompts.append(item)
    if not prompts:
        raise FormatError(f"{path}: no prompts")
    return prompts


def dumps(record: dict[str, Any]) -> str:
    """One JSONL line: stable key order, UTF-8 kept as is."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))
