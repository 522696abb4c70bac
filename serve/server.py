"""Launch vLLM's OpenAI-compatible server: one process serving the base plus two LoRA adapters.

The server runs in its own process group, with its log in `<home>/logs/vllm-<port>.log`. `stop()`
ends the group and any process that left it, so nothing it started outlives it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx

from limachat import procs
from limachat.layout import BASE_NAME, VARIANTS, Home, training_record
from limachat.serve import precompile
from limachat.serve.net import AddressError, check_bind, free_local_port, url_host
from limachat.serve.plugin_env import ADAPTER_ROOTS, STATIC_ADAPTERS
from limachat.serve.plugin_env import ENABLE as PLUGIN
from limachat.serve.start import StartPhases

# LIMA's penalty on generated tokens only, selected per request (see limachat.serve.vllm_ext).
LOGITS_PROCESSOR = "limachat.serve.vllm_ext:GeneratedTokensPenalty"


class ServerError(Exception):
    """vLLM could not be started or did not become ready: one line, with the log's last words."""


def has_cuda_gpu() -> bool:
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass(frozen=True)
class Adapter:
    name: str
    path: Path
    trained: bool
    why_untrained: str = ""

    def describe(self) -> str:
        if self.trained:
            return f"serving the trained adapter in {self.path}"
        return f"serving an untrained LoRA adapter (same answers as the base; {self.why_untrained})"


def _trained_for(folder: Path) -> str | None:
    """The identity of the base an adapter was trained on (its path, for records made before identities)."""
    record = training_record(folder) or {}
    return record.get("base_identity") or record.get("base_model")


def find_adapters(home: Path, untrained: Path, base_model: str | None = None) -> list[Adapter]:
    """The trained adapter of each variant under <home>/checkpoints/<variant>, else the untrained one
    (also when the trained one was made for another base); then any other adapter trained there.
    Bases are compared by content (`base_identity`), not by how their path is spelled."""
    from limachat.serve.base import base_identity

    base_model = base_identity(base_model) if base_model else None
    adapters = []
    for variant in VARIANTS:
        trained = Home(home).checkpoint(variant)
        made_for = _trained_for(trained)
        if (trained / "adapter_config.json").is_file() and base_model and made_for not in (None, base_model):
            adapters.append(Adapter(variant, untrained, False, f"{trained} was trained on {made_for}"))
        elif (trained / "adapter_config.json").is_file():
            adapters.append(Adapter(variant, trained, True))
        elif (trained / "config.json").is_file():
            raise ServerError(
                f"{trained} is a full fine-tuned model, which one vLLM server cannot serve beside another: "
                f"serve it with `limachat serve --base {trained} --port 8001` and point the {variant!r} "
                'checkpoint\'s base_url (model "base") at that port'
            )
        else:
            adapters.append(Adapter(variant, untrained, False, f"no {trained}"))
    # Adapters trained under other names (`limachat train --name`, the app's Collect tab) on this base.
    folder = Home(home).checkpoints
    extra = sorted(folder.iterdir()) if folder.is_dir() else []
    for path in extra:
        if (
            path.name not in VARIANTS
            and (path / "adapter_config.json").is_file()
            and _trained_for(path) in (None, base_model)
        ):
            adapters.append(Adapter(path.name, path, True))
    return adapters


def cpu_binding(ranks: int, cores: list[int] | None = None) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for `ranks` CPU ranks (ordered data, pipeline, tensor, as vLLM reads it):
    this process's cores split into that many contiguous, equal shares ("0|1" for two ranks on two cores)."""
    cores = sorted(os.sched_getaffinity(0)) if cores is None else sorted(cores)
    if ranks > len(cores):
        raise ServerError(
            f"server.data_parallel × pipeline_parallel × tensor_parallel asks for {ranks} ranks; "
            f"this machine gives limachat {len(cores)} cores, and each CPU rank needs one"
        )
    share = len(cores) // ranks
    parts = [cores[i * share : (i + 1) * share] for i in range(ranks)]
    return "|".join(str(p[0]) if len(p) == 1 else f"{p[0]}-{p[-1]}" for p in parts)


def check_parallel(model: str, tensor_parallel: int, pipeline_parallel: int) -> None:
    """A tensor-parallel size the base's attention heads do not divide by, or more pipeline stages than
    layers: one line before vLLM starts (where the base is a local folder)."""
    try:
        config = json.loads((Path(model) / "config.json").read_text())
    except (OSError, ValueError):
        return
    for key in ("num_attention_heads", "num_key_value_heads"):
        heads = config.get(key)
        if isinstance(heads, int) and heads % tensor_parallel:
            raise ServerError(
                f"server.tensor_parallel = {tensor_parallel}: the base's {heads} {key.replace('_', ' ')[4:]} "
                "do not divide by it; pick a divisor, or use server.pipeline_parallel or data_parallel"
            )
    layers = config.get("num_hidden_layers")
    if isinstance(layers, int) and pipeline_parallel > layers:
        raise ServerError(f"server.pipeline_parallel = {pipeline_parallel}: the base has only {layers} layers")


# vLLM serves a Llama-family model's q/k/v and gate/up projections as one packed module each; a
# deployment-time target names the packed module vLLM holds (vLLM's `packed_modules_mapping`).
PACKED = {
    "q_proj": "qkv_proj",
    "k_proj": "qkv_proj",
    "v_proj": "qkv_proj",
    "gate_proj": "gate_up_proj",
    "up_proj": "gate_up_proj",
}
PACKED_ARCHITECTURES = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"}
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?:A|B)(?:\.[^.]+)?\.weight$")


def adapter_modules(path: Path) -> set[str]:
    """The modules an adapter puts LoRA weights on, as vLLM names them (`model.layers.15.self_attn.qkv_proj`):
    read from the weights' own names, which follow the adapter's `target_modules` and `layers_to_transform`."""
    from safetensors import safe_open

    weights = path / "adapter_model.safetensors"
    with safe_open(str(weights), framework="np") as f:
        keys = list(f.keys())
    modules = set()
    for key in keys:
        m = _LORA_KEY.match(key)
        if m is None:
            continue
        parent, _, leaf = m["module"].rpartition(".")
        modules.add(f"{parent}.{PACKED.get(leaf, leaf)}" if parent else PACKED.get(leaf, leaf))
    return modules


def lora_targets(model: str, adapters: list[Adapter]) -> list[str] | None:
    """`--lora-target-modules` for these adapters: every module one of them touches, and no other, so vLLM
    wraps only those (the demo adapters: the top 15 of 30 layers). None (vLLM wraps every supported module)
    where the base's packing is not one limachat knows or an adapter's weights cannot be read."""
    try:
        architectures = json.loads((Path(model) / "config.json").read_text()).get("architectures") or []
        if not set(architectures) & PACKED_ARCHITECTURES:
            return None
        targets = set().union(*(adapter_modules(a.path) for a in adapters))
    except (OSError, ValueError):  # a hub id for a base, or an adapter folder without safetensors
        return None
    return sorted(targets) or None


@dataclass
class ServerConfig:
    """How to start vLLM: the settings' [server] section (its one owner of defaults) resolved for a launch."""

    model: str
    adapters: list[Adapter]
    host: str
    port: int
    gpu: bool
    dtype: str | None
    enforce_eager: bool | None
    max_model_len: int
    max_lora_rank: int
    kv_cache_gib: int
    extra_args: list[str]
    lora_targets: list[str] | None = None  # --lora-target-modules (lora_targets()); None: every module
    # The key every request to /v1 must carry (Home.api_key); it goes in the environment, not the command
    # line, so neither `ps` nor the log shows it. None: anyone who reaches the port (benchmarks only).
    api_key: str | None = None
    # Adapters loaded at run time must lie under one of these folders (the plugin refuses others); empty: anywhere.
    adapter_roots: list[Path] = field(default_factory=list)
    data_parallel: int = 1
    pipeline_parallel: int = 1
    tensor_parallel: int = 1

    @property
    def ranks(self) -> int:
        return self.data_parallel * self.pipeline_parallel * self.tensor_parallel

    def command(self, eager: bool | None = None) -> list[str]:
        """vLLM's command line; `eager` overrides the setting (None: compiled, on CPU too: the plugin's
        LoRA path compiles)."""
        dtype = self.dtype or ("bfloat16" if self.gpu else "float32")
        eager = bool(self.enforce_eager if eager is None else eager)
        # Absolute paths, whatever the home's spelling ("data" or /abs/data): vLLM's compile cache (and the
        # mark of a finished compile, serve/precompile.py) is keyed by the command, not by where it ran.
        model = str(Path(self.model).resolve()) if Path(self.model).exists() else self.model
        # `python -m`: the CPU build's distribution is `vllm-cpu`, so the `vllm` script cannot find its metadata.
        cmd = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            model,
            "--served-model-name",
            BASE_NAME,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--dtype",
            dtype,
            "--max-model-len",
            str(self.max_model_len),
            "--logits-processors",
            LOGITS_PROCESSOR,
        ]
        if self.adapters:  # none: the base alone, without LoRA (the benchmark's yardstick)
            cmd += ["--enable-lora", "--max-lora-rank", str(self.max_lora_rank), "--max-loras", str(len(self.adapters))]
            cmd += ["--lora-modules", *[f"{a.name}={Path(a.path).resolve()}" for a in self.adapters]]
        if self.lora_targets:
            cmd += ["--lora-target-modules", *self.lora_targets]
        if eager:
            cmd.append("--enforce-eager")
        for flag, size in (
            ("--data-parallel-size", self.data_parallel),
            ("--pipeline-parallel-size", self.pipeline_parallel),
            ("--tensor-parallel-size", self.tensor_parallel),
        ):
            if size > 1:
                cmd += [flag, str(size)]
        return cmd + list(self.extra_args)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if not self.gpu:
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
            # vLLM keeps one core out of its engine by default; on a 2-core machine that halves decode
            # (make bench: both cores gave the higher rate, and the API server and app kept answering).
            env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            if self.ranks > 1:  # vLLM's automatic binding puts every data-parallel engine on the same cores
                env.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_binding(self.ranks))
        env[PLUGIN] = "1"  # limachat's patches to vLLM (serve/vllm_plugin.py), loaded by vLLM itself
        # The app's "serve it" loads a freshly trained adapter into the running server.
        env.setdefault("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
        if self.adapter_roots:
            env[ADAPTER_ROOTS] = os.pathsep.join(str(Path(p).resolve()) for p in self.adapter_roots)
            env[STATIC_ADAPTERS] = os.pathsep.join(str(Path(a.path).resolve()) for a in self.adapters)
        if self.api_key:
            env["VLLM_API_KEY"] = self.api_key
        env.setdefault("HF_HUB_OFFLINE", "1" if Path(self.model).exists() else env.get("HF_HUB_OFFLINE", "0"))
        return env

    @property
    def url(self) -> str:
        return f"http://{url_host(self.host)}:{self.port}/v1"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


# -- Nothing outlives its supervisor ------------------------------------------------------------------
# The vLLM process gets the Linux parent-death signal (SIGTERM when `limachat serve` dies, by any
# signal, SIGKILL included; vLLM then stops its own engine process), and a pidfile under the home
# names it, so the next `serve` can tell its own stale server on the port from someone else's.
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _child_setup(nice: int) -> Callable[[], None]:
    def setup() -> None:
        _die_with_parent()
        if nice:
            niceness = os.nice(nice)
            # Under autogroup scheduling (Linux's default on most distributions) the CPU is shared between
            # sessions first: the new session this child leads is a group of its own, whose niceness, not
            # the process's, is what counts against the user's other work.
            try:
                with open("/proc/self/autogroup", "w") as f:
                    f.write(str(niceness))
            except OSError:
                pass  # no autogroup here: the process's niceness is what counts

    return setup


def load_adapter(base_url: str, name: str, path: Path, api_key: str | None = None) -> None:
    """Load a trained LoRA adapter into the running local vLLM server (started with runtime LoRA
    updating on) under `name`, with the server's `api_key`; ValueError saying why not."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        body = {"lora_name": name, "lora_path": str(path)}
        r = httpx.post(base_url + "/load_lora_adapter", json=body, headers=headers, timeout=120)
    except httpx.HTTPError as e:
        raise ValueError(f"cannot reach the local vLLM server at {base_url}: {e}") from None
    if r.status_code != 200 and "already been loaded" not in r.text:
        raise ValueError(f"vLLM did not load {path}: HTTP {r.status_code}: {r.text[:300]}")


def pidfile(home: Path, port: int) -> Path:
    return Home(Path(home)).pidfile(port)


def stop_stale(home: Path, port: int) -> int | None:
    """Stop the vLLM server this home started on `port` whose supervisor died (a crash, a kill -9),
    so a new one can take the port; anything else there is left alone. Returns the pid it stopped."""
    import psutil

    proc = stale_server(home, port)
    if proc is None:
        return None
    family = [proc, *proc.children(recursive=True)]
    for p in family:
        p.terminate()
    _, alive = psutil.wait_procs(family, timeout=20)
    for p in alive:
        p.kill()
    psutil.wait_procs(alive, timeout=10)
    pidfile(home, port).unlink(missing_ok=True)
    return proc.pid


def stale_server(home: Path, port: int):
    """The process of a vLLM server this home started on `port` that is still running (its
    supervisor gone), else None. Recognised by pid, start time and command line, never by port alone."""
    import psutil

    try:
        record = json.loads(pidfile(home, port).read_text())
        proc = psutil.Process(record["pid"])
        if procs.same(record["pid"], record["started"]) and "vllm.entrypoints.openai.api_server" in proc.cmdline():
            return proc
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        pass
    return None


class VLLMServer:
    """A running vLLM server. Use as a context manager, or call start() and stop()."""

    def __init__(self, config: ServerConfig, log_path: Path, pid_path: Path | None = None, nice: int = 0):
        self.config = config
        self.nice = nice  # added to the server's niceness (a background compile runs at 19)
        self.eager_now = False  # this start serves uncompiled while a background compile fills the cache
        self.compiling: BackgroundCompile | None = None
        self.log_path = log_path
        self.pid_path = pid_path
        self.proc: subprocess.Popen | None = None
        self._seen: dict[int, object] = {}  # pid -> psutil.Process of everything it started
        self.start_seconds: float | None = None
        self.phases: StartPhases | None = None  # the phases of the last start (serve/start.py)

    def start(self, timeout: float = 900.0, progress: Callable[[str], None] | None = None) -> None:
        try:
            check_bind(self.config.host, self.config.port, "server.host/port")
        except AddressError as e:
            raise ServerError(str(e)) from None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.eager_now = compile_first(self.config)
        if self.eager_now and progress:
            progress(
                "the first start of this configuration on this machine: serving uncompiled at once, and "
                "compiling in the background for the next start (until then decode is slower)"
            )
        command = self.config.command(eager=True if self.eager_now else None)
        log = self.log_path.open("ab")
        log.write(("\n$ " + " ".join(command) + "\n").encode())
        log.flush()
        started = time.monotonic()
        self.proc = subprocess.Popen(
            command,
            env=self.config.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_child_setup(self.nice),
        )
        log.close()
        self.phases = StartPhases(self.log_path, started, expect_cached=not self.eager_now and compiled(self.config))
        if self.pid_path is not None:
            self.pid_path.parent.mkdir(parents=True, exist_ok=True)
            self.pid_path.write_text(
                json.dumps(
                    {
                        "pid": self.proc.pid,
                        "started": procs.started(self.proc.pid),
                        "supervisor": os.getpid(),
                    }
                )
            )
        try:
            self._wait_ready(started, timeout, progress)
        except BaseException:
            self.stop()
            raise
        self.phases.ready()
        self.start_seconds = time.monotonic() - started
        if self.eager_now and (self.compiling is None or not self.compiling.alive()):
            compile_log = self.log_path.with_name(self.log_path.stem + "-compile.log")
            self.compiling = BackgroundCompile(self.config, compile_log, progress or (lambda line: None)).start()

    def _wait_ready(self, started: float, timeout: float, progress: Callable[[str], None] | None) -> None:
        wanted = {BASE_NAME, *(a.name for a in self.config.adapters)}
        while True:
            self._track()
            if self.proc.poll() is not None:
                raise ServerError(
                    f"vLLM exited with code {self.proc.returncode} while starting; see {self.log_path}: {self.log_error()}"
                )
            try:
                listed = {
                    m["id"]
                    for m in httpx.get(self.config.url + "/models", headers=self.config.headers, timeout=2).json()[
                        "data"
                    ]
                }
                if wanted <= listed:
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            elapsed = time.monotonic() - started
            if elapsed > timeout:
                raise ServerError(f"vLLM not ready after {timeout:.0f} s; see {self.log_path}: {self.log_tail(1)}")
            line = self.phases.poll()
            if progress and line:
                progress(line)
            time.sleep(0.5)

    def _track(self) -> None:
        """Remember every process the server started, even ones that move to another group."""
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            for p in [root, *root.children(recursive=True)]:
                self._seen.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            pass

    def processes(self) -> list:
        """The processes it started that are still alive."""
        import psutil

        if self.proc is not None and self.proc.poll() is None:
            self._track()
        alive = []
        for p in self._seen.values():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        return alive

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the server's group, wait `grace` seconds, then SIGKILL whatever is left."""
        import psutil

        if self.compiling is not None:
            self.compiling.stop()
        if self.proc is None:
            return
        self._track() if self.proc.poll() is None else None
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            for p in self.processes():
                try:
                    p.send_signal(sig)
                except psutil.NoSuchProcess:
                    pass
            _, alive = psutil.wait_procs(self.processes(), timeout=grace)
            if not alive:
                break
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        if self.pid_path is not None:
            self.pid_path.unlink(missing_ok=True)

    def log_error(self) -> str:
        """The last line of the log that names an error (Python's last traceback line), else the last line."""
        lines = self.log_tail(200).splitlines()
        errors = [line for line in lines if re.search(r"\w+(Error|Exception)\b", line) and "Traceback" not in line]
        return (errors or lines or [""])[-1].strip()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def __enter__(self) -> VLLMServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def compiled(config: ServerConfig) -> bool:
    """Whether a compiled start of this configuration finished with vLLM's cache where it is now."""
    return precompile.compiled(config.command(eager=False), config.env())


def compile_first(config: ServerConfig) -> bool:
    """Whether this start serves uncompiled and compiles in the background (serve/precompile.py): compiling
    left to the default, on CPU, one rank, and no finished compile of this configuration in vLLM's cache."""
    return config.enforce_eager is None and not config.gpu and config.ranks == 1 and not compiled(config)


class BackgroundCompile:
    """A niced, compiled vLLM with `config`'s command on a free local port, run until it is ready (its
    compile is then in vLLM's cache) and stopped; `progress` hears when it is done, or why not."""

    def __init__(self, config: ServerConfig, log_path: Path, progress: Callable[[str], None]):
        self.config = replace(config, host="127.0.0.1", port=free_local_port(), enforce_eager=False)
        self.log_path = log_path
        self.progress = progress
        self.server: VLLMServer | None = None
        self.stopping = False
        self._thread = threading.Thread(target=self._run, name="limachat-compile", daemon=True)

    def start(self) -> BackgroundCompile:
        self._thread.start()
        return self

    def _run(self) -> None:
        self.server = VLLMServer(self.config, self.log_path, nice=19)
        try:
            self.server.start()
            precompile.record(self.config.command(), self.config.env(), self.server.start_seconds)
            self.progress(
                f"compiled for this CPU in the background in {self.server.start_seconds:.0f} s: "
                "the next start serves the compiled model"
            )
        except ServerError as e:
            if not self.stopping:
                self.progress(f"the background compile did not finish (the next start tries again): {e}")
        finally:
            self.server.stop()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self.stopping = True
        if self.server is not None:
            self.server.stop()
        self._thread.join(timeout=60)


RESTARTS = 3  # times `serve` and `demo` start vLLM again when it stops by itself


def supervise(
    server: VLLMServer,
    *,
    timeout: float,
    progress: Callable[[str], None],
    on_ready: Callable[[], None],
    again: str,
    restarts: int = RESTARTS,
) -> None:
    """Start vLLM and keep it up until Ctrl-C (KeyboardInterrupt, which propagates): when it stops by itself,
    start it again, up to `restarts` times, then raise ServerError. `on_ready` runs each time it is ready;
    `again` is the command that starts it over. The server is stopped however this ends."""
    try:
        for attempt in range(restarts + 1):
            progress(f"starting vLLM on {'GPU' if server.config.gpu else 'CPU'} (log: {server.log_path})")
            server.start(timeout=timeout, progress=progress)
            on_ready()
            while server.proc.poll() is None:
                time.sleep(0.5)
            stopped = (
                f"vLLM stopped (exit code {server.proc.returncode}): {server.log_error()} (log: {server.log_path})"
            )
            server.stop()  # whatever it left behind
            if attempt < restarts:
                progress(
                    f"{stopped}. Restarting it ({attempt + 1} of {restarts}). Replies it cut off are kept as "
                    "errors; retry them once it is ready."
                )
        raise ServerError(f"{stopped}. Stopped after {restarts} restarts; nothing is lost: start again with `{again}`.")
    finally:
        server.stop()
