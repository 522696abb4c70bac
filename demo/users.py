"""Logins: the `--auth` file and the check behind Gradio's login form.

The file holds one `name:hash` line per user, the hash an Argon2id string written by
`limachat users add NAME` (argon2-cffi). A `name:password` line in plain text still works; the app
warns about it at start. A failed login is answered only after a delay that doubles with each
failure of that name in a row (1 s up to 32 s), without holding up anyone else's requests.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

log = logging.getLogger(__name__)
HASH_PREFIX = "$argon2"
MAX_DELAY = 32.0


class AuthFileError(ValueError):
    """`FILE:LINE: what is wrong`."""


def read_users(path: Path) -> dict[str, str]:
    """name -> Argon2 hash or plain-text password, from an auth file (blank lines and # comments skipped)."""
    path = Path(path)
    try:
        data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a BOM, as Notepad writes
    except OSError as e:
        raise AuthFileError(f"{path}: {e.strerror}") from None
    users: dict[str, str] = {}
    for number, raw in enumerate(data.splitlines(), 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise AuthFileError(f"{path}:{number}: not UTF-8 text") from None
        if not line or line.startswith("#"):
            continue
        user, sep, secret = line.partition(":")
        if not sep or not user.strip() or not secret:
            raise AuthFileError(f"{path}:{number}: expected name:hash (write it with `limachat users add NAME`)")
        if user.strip() in users:
            raise AuthFileError(f"{path}:{number}: {user.strip()!r} appears twice")
        users[user.strip()] = secret
    if not users:
        raise AuthFileError(f"{path}: no users (add one with `limachat users add NAME --file {path}`)")
    return users


def plain(users: dict[str, str]) -> list[str]:
    """Users whose password is stored in plain text."""
    return [u for u, secret in users.items() if not secret.startswith(HASH_PREFIX)]


def add_user(path: Path, name: str, password: str) -> bool:
    """Write (or replace) `name`'s line with an Argon2id hash of `password`; True when it replaced one."""
    if not name or ":" in name or name != name.strip():
        raise AuthFileError(f"a user name needs text without ':' or surrounding spaces, not {name!r}")
    if not password:
        raise AuthFileError("an empty password is refused")
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    line = f"{name}:{PasswordHasher().hash(password)}"
    replaced = False
    for i, old in enumerate(lines):
        if old.partition(":")[0].strip() == name:
            lines[i], replaced = line, True
    if not replaced:
        lines.append(line)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o600)
    return replaced


@dataclass
class Logins:
    """`check` is the async function Gradio calls with each login form. (A plain coroutine function:
    Gradio awaits the check only when `inspect.iscoroutinefunction` says so, which is false for an
    object with an async `__call__`; the coroutine it would get instead is truthy and lets anyone in.)"""

    users: dict[str, str]
    failures: dict[str, int] = field(default_factory=dict)
    hasher: PasswordHasher = field(default_factory=PasswordHasher)

    def __post_init__(self):
        self._decoy = self.hasher.hash("not a password anyone has")  # checked for unknown names

    def _ok(self, name: str, password: str) -> bool:
        secret = self.users.get(name)
        if secret is None:
            try:  # as slow as a real check, so a wrong name cannot be told from a wrong password by timing
                self.hasher.verify(self._decoy, password)
            except VerificationError:
                pass
            return False
        if not secret.startswith(HASH_PREFIX):
            return secret == password
        try:
            return self.hasher.verify(secret, password)
        except (VerificationError, InvalidHashError):
            return False

    async def check(self, name: str, password: str) -> bool:
        ok = await asyncio.to_thread(self._ok, name, password)  # Argon2 takes ~0.1 s: not on the event loop
        if ok:
            self.failures.pop(name, None)
            return True
        n = self.failures[name] = self.failures.get(name, 0) + 1
        log.warning("failed login for %r (%d in a row)", name, n)
        await asyncio.sleep(min(2.0 ** (n - 1), MAX_DELAY))
        return False
