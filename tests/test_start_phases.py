"""What `limachat serve` shows while vLLM starts: phases and times read off vLLM's log, not its raw lines.

The log lines below are vLLM 0.32's own, as a cold and a warm start on this CPU wrote them (paths shortened).
"""

from __future__ import annotations

from pathlib import Path

from limachat.serve import start
from limachat.serve.start import StartPhases

COLD = [
    "(APIServer pid=3226) WARNING 12-06 02:26:07 [system_utils.py:255] Found ulimit of 20000 and failed to "
    "automatically increase with error current limit exceeds maximum limit.",
    "(Worker pid=3293) INFO 12-06 02:26:34 [cpu_model_runner.py:68] Starting to load model /h/base/model...",
    "(Worker pid=3293) INFO 12-06 02:26:36 [cpu_model_runner.py:87] Warming up model for the compilation...",
    "(EngineCore pid=3258) INFO 12-06 02:27:37 [shm_broadcast.py:466] No available shared memory broadcast "
    "block found in 60 seconds.",
    "(Worker pid=3293) INFO 12-06 02:27:54 [decorators.py:743] [backbone] saved AOT compiled function to /c/x",
    "(Worker pid=3293) INFO 12-06 02:27:58 [cpu_model_runner.py:91] Warming up done.",
    "(EngineCore pid=3258) INFO 12-06 02:27:59 [core.py:402] init engine (profile, create kv cache, warmup "
    "model) took 83.17 s",
]
# (seconds after the start, how many of COLD's lines the log holds by then)
COLD_TIMES = [(10, 1), (34, 2), (36, 3), (97, 4), (114, 5), (118, 6), (119, 7), (122, 7)]
WARM = [
    COLD[1],
    COLD[2],
    "(Worker pid=3690) INFO 12-06 02:29:15 [decorators.py:319] [backbone] Directly load AOT compilation from path /c/x",
    COLD[5],
    COLD[6],
]


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_start(tmp_path, monkeypatch, lines, times) -> tuple[StartPhases, list[str]]:
    clock = Clock()
    monkeypatch.setattr(start.time, "monotonic", clock)
    log = tmp_path / "vllm-8000.log"
    log.write_text("an earlier start's lines: Warming up model for the compilation...\n")
    phases = StartPhases(log, clock.now)
    shown, written = [], 0
    t0 = clock.now
    for seconds, upto in times:
        clock.now = t0 + seconds
        with log.open("a") as f:
            f.write("".join(line + "\n" for line in lines[written:upto]))
        written = upto
        if line := phases.poll():
            shown.append(line)
    phases.ready()
    return phases, shown


def test_a_cold_start_shows_each_phase_with_its_time_and_none_of_vllms_lines(tmp_path, monkeypatch):
    phases, shown = run_start(tmp_path, monkeypatch, COLD, COLD_TIMES)
    assert (
        shown[0] == "starting vLLM,  10 s: starting vLLM's processes (Python, the API server, the engine) (10 s so far)"
    )
    assert "starting vLLM,  34 s: loading the weights and the adapters" in shown
    compile_lines = [line for line in shown if "compiling" in line]
    assert compile_lines[0] == (
        "starting vLLM,  36 s: compiling the model for this CPU, first start only (later starts load it from a cache)"
    )
    assert compile_lines[-1].endswith("(78 s so far)")  # every 10 s at most, so a long compile is not silent
    assert not any(w in line for line in shown for w in ("WARNING", "ulimit", "shared memory", "AOT"))
    assert phases.summary() == "processes 34 s, weights 2 s, compile 82 s, engine 4 s"


def test_a_warm_start_says_it_loads_from_the_cache_and_the_next_compile_says_how_long_the_last_took(
    tmp_path, monkeypatch
):
    cold, _ = run_start(tmp_path, monkeypatch, COLD, COLD_TIMES)
    assert cold.last_compile() == 82.0
    warm, shown = run_start(tmp_path, monkeypatch, WARM, [(8, 1), (11, 2), (15, 3), (18, 4), (20, 5), (22, 5)])
    assert "starting vLLM,  15 s: loading the compiled model from vLLM's cache (4 s so far)" in shown
    assert warm.summary() == "processes 8 s, weights 3 s, cached 7 s, engine 4 s"
    assert warm.last_compile() == 82.0  # a load from the cache leaves the last compile's figure alone
    again, shown = run_start(tmp_path, monkeypatch, COLD, [(34, 2), (36, 3)])
    assert (
        "starting vLLM,  36 s: compiling the model for this CPU, first start only: about 82 s the last time here"
        in shown
    )


def test_a_start_that_expects_the_cache_says_so_before_vllm_does(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(start.time, "monotonic", clock)
    log = tmp_path / "vllm-8000.log"
    log.write_text("")
    phases = StartPhases(log, 1000.0, expect_cached=True)
    log.write_text("\n".join(WARM[:2]) + "\n")
    clock.now += 12
    assert phases.poll() == ("starting vLLM,  12 s: loading the compiled model from vLLM's cache")


def test_an_eager_start_has_no_compile_phase(tmp_path, monkeypatch):
    eager = [COLD[1], COLD[6]]
    phases, shown = run_start(tmp_path, monkeypatch, eager, [(20, 1), (23, 2), (25, 2)])
    assert phases.summary() == "processes 20 s, weights 3 s, engine 2 s"
    assert not any("compil" in line for line in shown)


def test_a_first_start_serves_uncompiled_only_until_its_configuration_is_compiled(tmp_path, monkeypatch):
    """The background compile's marker belongs to a configuration, whatever port or host serves it."""
    from dataclasses import replace

    from limachat.serve.precompile import record
    from limachat.serve.server import ServerConfig, compile_first

    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm-cache"))
    config = ServerConfig("/models/base", [], "127.0.0.1", 8000, False, None, None, 2048, 8, 1, [])
    assert compile_first(config)
    record(config.command(eager=False), config.env(), 120.0)
    assert len(list((tmp_path / "vllm-cache" / "limachat-compiled").glob("*.json"))) == 1
    assert not compile_first(replace(config, port=8001, host="0.0.0.0"))
    assert compile_first(replace(config, max_model_len=4096))  # another configuration, another compile
    assert not compile_first(replace(config, max_model_len=4096, enforce_eager=True))  # eager, as set
    assert not compile_first(replace(config, max_model_len=4096, enforce_eager=False))  # compiled now, as set
    assert not compile_first(replace(config, max_model_len=4096, gpu=True))  # CUDA graphs: vLLM's own way
    assert not compile_first(replace(config, max_model_len=4096, data_parallel=2))  # ranks compile at once


def test_a_home_spelled_relative_or_absolute_is_one_configuration(tmp_path, monkeypatch):
    """`make demo` names the home by its absolute path, a `limachat serve` in the same folder by the default
    `data`: the second start still finds the first's compile."""
    from dataclasses import replace

    from limachat.serve.precompile import record
    from limachat.serve.server import Adapter, ServerConfig, compile_first

    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm-cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "base" / "model").mkdir(parents=True)
    (tmp_path / "data" / "checkpoints" / "dialogue").mkdir(parents=True)
    absolute = ServerConfig(
        str(tmp_path / "data" / "base" / "model"),
        [Adapter("dialogue", tmp_path / "data" / "checkpoints" / "dialogue", True)],
        "127.0.0.1", 8000, False, None, None, 2048, 8, 1, [],
    )  # fmt: skip
    record(absolute.command(eager=False), absolute.env(), 30.0)
    relative = replace(
        absolute, model="data/base/model", adapters=[Adapter("dialogue", Path("data/checkpoints/dialogue"), True)]
    )
    assert relative.command(eager=False) == absolute.command(eager=False)
    assert not compile_first(relative)
