"""The data side: the SQLite store, import and export, and the Figure 7 report."""

from importlib.resources import files
from pathlib import Path


def bundled(name: str) -> Path:
    """A file of dialogues/data: train.jsonl (LIMA format), prompts.jsonl (the 10 opening prompts),
    heldout.jsonl (held-out chains for the loss) or followups.jsonl (held-out follow-up conversations)."""
    return Path(str(files("limachat.dialogues") / "data" / name))
