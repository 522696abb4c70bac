"""What a starting vLLM server is doing, read off its log as phases a person can follow.

vLLM's own lines (and its warnings) stay in its log file; `limachat serve` shows the phase and the
time spent, and when it is ready, how long each phase took. The compile phase says how long the last
compile in this home took, a figure kept next to the log (`vllm-<port>.start.json`).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

# (phase, what it is doing, the vLLM 0.32 log line that begins it); the first begins at the process start.
PHASES = (
    ("processes", "starting vLLM's processes (Python, the API server, the engine)", None),
    ("weights", "loading the weights and the adapters", re.compile(r"Starting to load model")),
    ("compile", "compiling the model for this CPU, first start only", re.compile(r"Warming up model for the compil")),
    ("cached", "loading the compiled model from vLLM's cache", re.compile(r"Directly load AOT compilation")),
    ("engine", "setting up the KV cache and the API server", re.compile(r"Warming up done|init engine \(")),
)
WORDS = {name: words for name, words, _ in PHASES}
REPORT_EVERY = 10.0  # seconds between two lines of the same phase


class StartPhases:
    """Phases of one start of the server logging to `log_path`, from the log's size at the start on."""

    def __init__(self, log_path: Path, started: float | None = None, expect_cached: bool = False):
        self.log_path = log_path
        self.record_path = log_path.with_suffix(".start.json")
        self.started = time.monotonic() if started is None else started
        self._offset = log_path.stat().st_size if log_path.exists() else 0
        self._partial = ""
        self.phases: list[tuple[str, float]] = [("processes", self.started)]  # (phase, monotonic start)
        self._reported: tuple[str, float] | None = None
        self.ready_at: float | None = None
        self.expect_cached = expect_cached  # vLLM's cache should hold the compile: the warm-up is a load

    @property
    def phase(self) -> str:
        return self.phases[-1][0]

    def _read(self) -> None:
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return
        self._offset += len(chunk)
        lines = (self._partial + chunk.decode(errors="replace")).split("\n")
        self._partial = lines.pop()
        now = time.monotonic()
        for line in lines:
            for name, _, pattern in PHASES:
                if pattern is not None and pattern.search(line) and name != self.phase:
                    if name == "cached" and self.phase == "compile":  # the warm-up was a load from the cache
                        self.phases[-1] = ("cached", self.phases[-1][1])
                    elif name not in {n for n, _ in self.phases}:
                        self.phases.append((name, now))

    def poll(self) -> str | None:
        """Read what the log gained; a line to show when the phase changed or every REPORT_EVERY seconds."""
        self._read()
        now = time.monotonic()
        phase, began = self.phases[-1]
        if self._reported and self._reported[0] == phase and now - self._reported[1] < REPORT_EVERY:
            return None
        self._reported = (phase, now)
        words = WORDS[phase]
        if phase == "compile" and self.expect_cached:
            words = WORDS["cached"]
        elif phase == "compile":
            last = self.last_compile()
            words += f": about {last:.0f} s the last time here" if last else " (later starts load it from a cache)"
        so_far = f" ({now - began:.0f} s so far)" if now - began >= 1 else ""
        return f"starting vLLM, {now - self.started:3.0f} s: {words}{so_far}"

    def ready(self) -> dict[str, float]:
        """The start is over: each phase's seconds, and the compile's kept for the next start's estimate."""
        self._read()
        self.ready_at = time.monotonic()
        took = self.breakdown()
        if "compile" in took:
            try:
                self.record_path.write_text(json.dumps({"compile_s": round(took["compile"], 1)}))
            except OSError:
                pass  # the estimate is a nicety; a read-only home still serves
        return took

    def breakdown(self) -> dict[str, float]:
        ends = [began for _, began in self.phases[1:]] + [self.ready_at or time.monotonic()]
        return {name: end - began for (name, began), end in zip(self.phases, ends, strict=True)}

    def summary(self) -> str:
        """'processes 33 s, weights 2 s, compile 82 s, engine 5 s'."""
        return ", ".join(f"{name} {seconds:.0f} s" for name, seconds in self.breakdown().items())

    def last_compile(self) -> float | None:
        try:
            return float(json.loads(self.record_path.read_text())["compile_s"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
