"""A newcomer's first `make demo`: a clean clone of HEAD, with no pip, vLLM, torch or limachat caches (pip
downloads every package; vLLM's and torch's caches point into an empty folder), timed from the command to
both demo checkpoints answering, phase by phase from the lines `make demo` prints; then decode while the
background compile the first start began runs and once it is done, and a second start in the same home."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import bench_app
import bench_serve
import httpx

ROOT = Path(__file__).resolve().parent.parent

# (phase, the line that ends it); each phase begins where the one before ended, the first at the command.
PHASES = (
    ("set-up (`make venv`: a venv, pip downloads and installs everything)", "bin/limachat demo"),
    ("conversion of the bundled base", "base model ready"),
    ("the demo adapters (shipped ones installed, or trained)", "starting vLLM on"),
    ("vLLM start", "vLLM ready in"),
    ("the app", "app ready:"),
)


class Lines:
    """A process's output lines, each with the seconds since `start` when it arrived."""

    def __init__(self, proc: subprocess.Popen, start: float, echo: bool = True):
        self.seen: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, args=(proc, start, echo), daemon=True)
        self._thread.start()

    def _read(self, proc, start, echo) -> None:
        for line in proc.stdout:
            self.seen.append((time.monotonic() - start, line.rstrip("\n")))
            if echo and not line.startswith(("  ", "Collecting", "Downloading", "Requirement", "Using cached")):
                print(f"    {self.seen[-1][0]:6.0f} s  {line.rstrip()[:150]}", flush=True)

    def when(self, marker: str, proc: subprocess.Popen, timeout: float = 2400) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, line in self.seen:
                if marker in line:
                    return t, line
            if proc.poll() is not None:
                break
            time.sleep(0.5)
        tail = "\n".join(line for _, line in self.seen[-30:])
        raise SystemExit(f"`{marker}` never came (exit {proc.poll()}):\n{tail}")


def _start(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[subprocess.Popen, float]:
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    return proc, start


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _answer(url: str, key: str, model: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "Hello! Who are you?"}], "max_tokens": 16}
    r = httpx.post(url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=300)
    r.raise_for_status()
    assert r.json()["choices"][0]["message"]["content"].strip(), f"{model} answered nothing"


def _breakdown(line: str) -> str:
    found = re.search(r"vLLM ready in \d+ s \(([^)]*)\)", line)
    return found.group(1) if found else "?"


def first_run(free_port) -> dict:
    """The phases of a first `make demo` in seconds, and the starts' breakdowns."""
    with tempfile.TemporaryDirectory(prefix="limachat-first-") as tmp:
        clone, caches = Path(tmp) / "limachat", Path(tmp) / "caches"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        vllm_port, app_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LIMACHAT_", "VIRTUAL_ENV", "VLLM_"))}
        env.update(
            PIP_NO_CACHE_DIR="1",
            XDG_CACHE_HOME=str(caches),
            VLLM_CACHE_ROOT=str(caches / "vllm"),
            TORCHINDUCTOR_CACHE_DIR=str(caches / "inductor"),
            HF_HOME=str(caches / "huggingface"),
            PYTHONUNBUFFERED="1",
            LIMACHAT_SERVER__PORT=str(vllm_port),
            LIMACHAT_APP__PORT=str(app_port),
        )
        proc, start = _start(["make", "demo"], clone, env)
        lines = Lines(proc, start)
        try:
            ends, ready_line = {}, ""
            for phase, marker in PHASES:
                ends[phase], line = lines.when(marker, proc)
                ready_line = line if marker == "vLLM ready in" else ready_line
            key = (clone / "data" / "server.key").read_text().strip()
            url = f"http://127.0.0.1:{vllm_port}/v1"
            for model in ("zero-shot", "dialogue"):
                _answer(url, key, model)
            ends["both demo checkpoints' first replies"] = time.monotonic() - start
            # A newcomer's first replies come while the background compile runs: decode then, and once it is done
            # (the same uncompiled server, nothing beside it).
            # One stream, as the serving section measures it (bench_serve.decode).
            bench_app.KEYS[url] = key
            during = [asyncio.run(bench_serve.decode(url, "dialogue", 1)) for _ in range(3)]
            compiled_at, _ = lines.when("the next start serves the compiled model", proc)
            alone = [asyncio.run(bench_serve.decode(url, "dialogue", 1)) for _ in range(3)]
        finally:
            _stop(proc)
        result = {
            "ends": ends,
            "first_breakdown": _breakdown(ready_line),
            "compiled_after": compiled_at,
            "decode_during": during,
            "decode_alone": alone,
        }
        second, start = _start([str(clone / ".venv" / "bin" / "limachat"), "serve"], clone, env)
        again = Lines(second, start, echo=False)
        try:
            seconds, line = again.when("vLLM ready in", second)
        finally:
            _stop(second)
        result.update(second=seconds, second_breakdown=_breakdown(line))
        return result


if __name__ == "__main__":
    print(first_run(bench_serve.free_port))
