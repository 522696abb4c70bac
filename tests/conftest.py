"""Shared fixtures: a clean settings environment, the converted base model, the real vLLM server."""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from limachat.serve.net import free_local_port as free_port

REPO = Path(__file__).resolve().parents[1]
# Where the browser tests save their screenshots: a folder of this session's own, so a test run writes
# nothing tracked; `make screenshots` sets SCREENSHOTS=docs/screenshots to refresh the docs' pictures.
SCREENSHOTS = bool(os.environ.get("SCREENSHOTS"))
SHOTS = Path(os.environ.get("SCREENSHOTS") or tempfile.mkdtemp(prefix="limachat-shots-")).resolve()

# The tiny model keeps the bundled tokenizer's 49,152-token vocabulary, so a training step's logits are
# blocks of hundreds of MB, which glibc maps fresh and unmaps at every step: a third of a tiny training's
# time went to page faults (9.4 M of them in 48 steps). This session's processes (this one, and through the
# environment every one it starts) keep freed memory for the next step instead. The bundled model's
# training is bound by its arithmetic and gained nothing from it (docs/testing.md, "The tiny model").
KEEP_FREED = 2**31 - 1  # bytes a process may keep free before glibc gives them back
os.environ.setdefault("GLIBC_TUNABLES", f"glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold={KEEP_FREED}")
_libc = ctypes.CDLL(None)
_libc.mallopt(-4, 0)  # M_MMAP_MAX: no block of its own mapped for a large allocation
_libc.mallopt(-1, KEEP_FREED)  # M_TRIM_THRESHOLD


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No LIMACHAT_* variables and an empty working directory (so no stray limachat.toml)."""
    for key in list(os.environ):
        if key.startswith("LIMACHAT_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """The tiny random model of the bundled architecture (tests/tiny.py), built once per session."""
    from tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def model_home(tmp_path_factory, tiny_base) -> Path:
    """A data directory whose base is the tiny model (`server.base`), with its untrained adapter."""
    from limachat.serve.base import prepare_base

    home = tmp_path_factory.mktemp("home")
    prepare_base(home, str(tiny_base), progress=lambda m: print(m, file=sys.stderr))
    return home


@pytest.fixture(scope="session")
def trained_home(model_home, tiny_base) -> Path:
    """Both demo adapters trained on the tiny base by the demo's own recipe, on a slice of its data (TRL, ~12 s)."""
    from tiny import training_data

    return _train_demo(model_home, str(tiny_base), training_data())


@pytest.fixture(scope="session")
def real_home(tmp_path_factory) -> Path:
    """A data directory holding the bundled base (SmolLM2-135M), converted once for the whole session."""
    from limachat.serve.base import prepare_base

    home = tmp_path_factory.mktemp("real")
    seed = os.environ.get("TESTS_SEED_HOME")
    if seed:  # a developer's shortcut (CI never sets it): start from a home with the base and adapters made;
        # prepare_base and training still check their fingerprints and redo whatever does not match
        for part in ("base", "checkpoints"):
            if (Path(seed) / part).is_dir():
                shutil.copytree(Path(seed) / part, home / part, symlinks=True)
    prepare_base(home, None, progress=lambda m: print(m, file=sys.stderr))
    return home


@pytest.fixture(scope="session")
def real_trained_home(real_home) -> Path:
    """Both demo adapters on the bundled base as `limachat demo` makes them (the shipped ones, train/adapters/,
    while the recipe's fingerprint matches; else trained here, TRL on CPU, ~8 minutes): the tests where what a
    user reads is the point talk to what a user gets."""
    from limachat.settings import Settings
    from limachat.train.data import bundled_examples, split

    return _train_demo(real_home, str(Settings(home=real_home).base_folder()), split(bundled_examples()))


def _train_demo(home: Path, base: str, data) -> Path:
    from limachat.settings import Settings
    from limachat.train.pipeline import run

    progress = lambda m: print(m, file=sys.stderr)  # noqa: E731
    run(Settings(home=home), ["zero-shot", "dialogue"], data, base, {}, progress=progress)
    return home


class RunningServer:
    """`limachat serve` running as a user would start it, in its own subprocess."""

    def __init__(self, home: Path, port: int, env: dict[str, str] | None = None):
        self.home, self.port = home, port
        self.url = f"http://127.0.0.1:{port}/v1"
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("LIMACHAT_")}, **(env or {})}
        env.update(LIMACHAT_HOME=str(home), PYTHONUNBUFFERED="1")
        self.env = env
        self.stderr_path = home / f"serve-{port}.stderr"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "limachat.cli", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr_path.open("wb"),
            cwd=home,
        )
        self.started: dict[int, object] = {}
        from limachat.serve.base import base_slug
        from limachat.settings import Settings

        configured = env.get("LIMACHAT_SERVER__BASE")
        self.base = configured or str(Settings(home=home).base_folder())  # the folder vLLM serves
        self.untrained = home / "base" / base_slug(configured) / "untrained-lora"
        self.eager = {"true": True, "false": False}.get(env.get("LIMACHAT_SERVER__ENFORCE_EAGER", ""))

    def settings(self, home: Path, **fields):
        """Settings for a data home of a test's own that uses this server: its port, its base and its key."""
        from limachat.settings import Settings

        settings = Settings(home=home, **fields)
        settings.server.port, settings.server.base = self.port, self.base
        settings.server.enforce_eager = self.eager
        self.share_key(home)
        return settings

    def output(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def key(self) -> str | None:
        """The API key `limachat serve` made in its home, which every request to /v1 must carry."""
        from limachat.layout import Home

        return Home(self.home).api_key()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def checkpoint(self, name: str, model: str | None = None):
        from limachat.serve.checkpoints import Checkpoint

        return Checkpoint(name=name, model=model or name, base_url=self.url, api_key=self.key)

    def share_key(self, home: Path) -> None:
        """Give another data home this server's key, as a user of two homes on one server would."""
        home.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.home / "server.key", home / "server.key")

    def track(self) -> None:
        import psutil

        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:  # a short-lived child (or the server itself) exited while being listed
            return
        for p in children:
            self.started.setdefault(p.pid, p)

    def _wait_for(self, line: str, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while line not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what}:\n{self.output()[-3000:]}")
            time.sleep(1)

    def wait_ready(self, timeout: float = 900) -> None:
        self._wait_for("vLLM ready", "limachat serve did not come up", timeout)
        self.track()

    def wait_compiled(self, timeout: float = 300) -> None:
        """Until the background compile of a first start (serve/precompile.py) says it is done."""
        self._wait_for("the next start serves the compiled model", "the background compile did not finish", timeout)

    def vllm(self):
        """The vLLM server process `limachat serve` runs for this port (not a background compile's)."""
        import psutil

        return next(
            p
            for p in psutil.Process(self.proc.pid).children(recursive=True)
            if "vllm.entrypoints.openai.api_server" in " ".join(p.cmdline())
            and f"--port {self.port}" in " ".join(p.cmdline())
        )

    def last_start(self) -> list[str]:
        """The phases of the latest start of vLLM, from its ready line: ['processes', 'weights', ...]."""
        ready = re.findall(r"vLLM ready in \d+ s \(([^)]*)\)", self.output())
        return re.findall(r"(\w+) \d+ s", ready[-1]) if ready else []

    def serve_compiled(self, timeout: float = 300) -> None:
        """Until vLLM serves the compiled model: after the first start's background compile, a restart loads
        it from vLLM's cache. In the whole suite test_crash.py's kill made that restart; a test run on its
        own kills the first, uncompiled vLLM here, and `limachat serve` starts it again."""
        self.wait_compiled(timeout)
        if "cached" not in self.last_start():
            starts = self.output().count("vLLM ready")
            self.vllm().send_signal(signal.SIGKILL)
            deadline = time.monotonic() + timeout
            while self.output().count("vLLM ready") == starts:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"vLLM did not start again:\n{self.output()[-3000:]}")
                time.sleep(1)
        assert self.last_start() == ["processes", "weights", "cached", "engine"], self.last_start()

    def interrupt(self, timeout: float = 120) -> int:
        self.track()
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=timeout)

    def leftovers(self) -> list:
        import psutil

        return [p for p in self.started.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _serve(home: Path, tmp_path_factory, env: dict[str, str]):
    """Start `limachat serve` for the whole session; leave nothing running whatever the tests did."""
    dirs = json.dumps([str(tmp_path_factory.getbasetemp())])
    server = RunningServer(home, free_port(), env={"LIMACHAT_SERVER__ADAPTER_DIRS": dirs, **env})
    try:
        server.wait_ready()
        yield server
    finally:
        try:
            if server.proc.poll() is None:
                server.interrupt()
        finally:
            server.proc.kill()
            for p in server.leftovers():
                p.kill()


@pytest.fixture(scope="session")
def tiny_env(tiny_base) -> dict[str, str]:
    """The settings that make `limachat serve` serve the tiny model, eagerly (compiling would cost more than
    it saves on replies of random tokens)."""
    return {"LIMACHAT_SERVER__BASE": str(tiny_base), "LIMACHAT_SERVER__ENFORCE_EAGER": "true"}


@pytest.fixture(scope="session")
def vllm_server(request, tmp_path_factory) -> RunningServer:
    """The real vLLM CPU server on the tiny model with its two demo adapters, for the whole session, at the
    default compile setting.

    Tests marked `kills_vllm` run after every other test that uses it (they kill vLLM under it and wait
    for `limachat serve` to bring it back); tests marked `stops_server` run after those and stop it.
    Adapters the tests train in their own homes load from the session's temporary folder
    (server.adapter_dirs). Under `make screenshots` (SCREENSHOTS set) it is `real_server`: the pictures in
    the docs show the bundled model's replies, not random tokens."""
    if SCREENSHOTS:
        yield request.getfixturevalue("real_server")
        return
    home, tiny = request.getfixturevalue("trained_home"), request.getfixturevalue("tiny_env")
    # Compiling left to the default, with an empty vLLM cache of its own: the first start serves uncompiled
    # and compiles in the background (test_serve.py waits for it), so vLLM's restart after the kill
    # (test_crash.py) loads the compiled model, as a user's next start does.
    env = {k: v for k, v in tiny.items() if k != "LIMACHAT_SERVER__ENFORCE_EAGER"}
    env["VLLM_CACHE_ROOT"] = str(tmp_path_factory.mktemp("vllm-cache"))
    yield from _serve(home, tmp_path_factory, env)


@pytest.fixture(scope="session")
def real_server(real_trained_home, tmp_path_factory) -> RunningServer:
    """The real vLLM CPU server on the bundled model with both demo adapters, at the defaults a user gets
    (docs/testing.md says which tests need it, and why), uncompiled, as a user's first start on a new
    machine serves it (`enforce_eager = true`: without it, a clean clone's empty vLLM cache would compile
    the bundled model for 100 s before the first test). What these tests check is what the model says; the
    compiled path computes the same, which test_lora_parity.py checks against PEFT on the tiny model."""
    yield from _serve(real_trained_home, tmp_path_factory, {"LIMACHAT_SERVER__ENFORCE_EAGER": "true"})


# A test's tier follows from the fixtures it uses (directly or through other fixtures): `make test-fast`
# runs those without the `model` marker.
TIERS = {  # each fixture's markers, those of the fixtures it stands on included
    "tiny_base": ("model",),
    "model_home": ("model",),
    "trained_home": ("model", "training"),
    "vllm_server": ("model", "training", "server", *(("real",) if SCREENSHOTS else ())),
    "real_home": ("model", "real"),
    "real_trained_home": ("model", "training", "real"),
    "real_server": ("model", "training", "server", "real"),
}


def pytest_collection_modifyitems(config, items):
    """Mark each test by the fixtures it needs; then order by what a test does to the shared server:
    those that kill vLLM under it (it comes back, compiled) after the others, then those that need it
    compiled, and those that stop it last."""
    for item in items:
        for marker in {m for f, ms in TIERS.items() if f in item.fixturenames for m in ms}:
            item.add_marker(marker)
    order = {"kills_vllm": 1, "after_restart": 2, "stops_server": 3}
    items.sort(key=lambda item: max((n for m, n in order.items() if item.get_closest_marker(m)), default=0))


def models(url: str, headers: dict[str, str] | None = None) -> set[str]:
    return {m["id"] for m in httpx.get(url + "/models", headers=headers, timeout=5).json()["data"]}
