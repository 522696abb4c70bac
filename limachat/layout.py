"""Facts every layer reads and none owns: the names of the served checkpoints, and the folders under a
data home. It imports nothing of limachat, so serve, train, dialogues and the app can all use it."""

from __future__ import annotations

import json
import os
import secrets
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASE_NAME = "base"  # the untuned base, as the local vLLM server serves it (--served-model-name)
VARIANTS = ("zero-shot", "dialogue")  # LIMA's two checkpoints: 1,000 single-turn examples; those plus 30 chains
ZERO_SHOT, DIALOGUE = VARIANTS
TRAINING_RECORD = "training.json"  # what `limachat train` writes beside an adapter: data, recipe, base, losses


def training_record(adapter: Path) -> dict[str, Any] | None:
    """The training record in an adapter's folder, or None where there is none or it does not parse."""
    try:
        record = json.loads((Path(adapter) / TRAINING_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_training_record(adapter: Path, record: dict[str, Any]) -> None:
    (Path(adapter) / TRAINING_RECORD).write_text(json.dumps(record, indent=1) + "\n")


@dataclass(frozen=True)
class Home:
    """A data home (LIMACHAT_HOME) and the layout under it."""

    root: Path

    @property
    def db(self) -> Path:
        return self.root / "limachat.db"

    @property
    def bases(self) -> Path:  # one folder per prepared base model
        return self.root / "base"

    @property
    def checkpoints(self) -> Path:  # one folder per trained adapter, named as it is served
        return self.root / "checkpoints"

    def checkpoint(self, name: str) -> Path:
        return self.checkpoints / name

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def jobs(self) -> Path:  # background jobs' progress, one JSON file each
        return self.root / "jobs"

    @property
    def users(self) -> Path:  # the default --auth file of `limachat users add`
        return self.root / "users.txt"

    def vllm_log(self, port: int) -> Path:
        return self.logs / f"vllm-{port}.log"

    def pidfile(self, port: int) -> Path:  # the vLLM server a limachat started on this port
        return self.root / "run" / f"vllm-{port}.pid"

    @property
    def server_key(self) -> Path:  # the API key of every vLLM server `limachat serve` starts (owner-only)
        return self.root / "server.key"

    def api_key(self, create: bool = False) -> str | None:
        """The local vLLM server's API key: made once (by `limachat serve`, `create=True`) with owner-only
        permissions, then read by limachat's own clients and jobs. None where there is none yet."""
        path = self.server_key
        if create and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # Written whole into a file of its own, then linked into place: a `serve` started beside
            # this one in the same home finds either no key or the whole key, never an empty file.
            fd, draft = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # owner-only
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
            try:
                os.link(draft, path)
            except FileExistsError:  # another `serve` made it first: use that one
                pass
            except OSError:  # a filesystem without hard links (FAT, some network shares): moved into place
                if not path.exists():
                    os.replace(draft, path)
            finally:
                Path(draft).unlink(missing_ok=True)
        try:
            if create and stat.S_IMODE(path.stat().st_mode) & 0o077:
                path.chmod(0o600)  # copied in with looser permissions: only its owner may read it
            return path.read_text().strip() or None
        except FileNotFoundError:
            return None
