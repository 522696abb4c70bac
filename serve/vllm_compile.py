"""limachat's patches to how vLLM starts, compiles and warms up on CPU (registered in serve/vllm_plugin.py):
inspecting the model class in the process, running one rank's model in the engine's process, forking that
process, compiling with LoRA on, reloading the compile cache, and a later pipeline stage's warm-up in eager
mode."""

from __future__ import annotations

import os

from limachat.serve.vllm_patch import MARK


def _patch_cpu_inspect_in_process() -> None:
    """On a first start (no model info in vLLM's cache yet) vLLM 0.32 inspects the model class in a fresh
    Python process, so as not to initialise CUDA in the API server: an import of vLLM and torch, 8 s of a
    cold start here. A CPU has no CUDA to keep out of the API server: the class is inspected in it."""
    from vllm.model_executor.models import registry

    def _run_in_subprocess(fn):
        return fn()

    setattr(_run_in_subprocess, MARK, True)
    registry._run_in_subprocess = _run_in_subprocess


def _patch_cpu_engine_runs_the_model() -> None:
    """vLLM 0.32's CPU platform turns one rank's in-process executor ("uni") into the multiprocess one
    ("mp"), so the model runs in a third process (a worker) beside the API server and the engine, and each
    step crosses between engine and worker through a shared-memory queue that both spin on. On this 2-core
    machine that costs a Python start (8-12 s of every start) and up to a quarter of the decode rate and a
    sixth of a prompt's: the spin takes cycles from the model's two threads (measured side by side with
    `server.extra_args = ["--distributed-executor-backend", "mp"]`, which keeps vLLM's worker). With one
    rank and one engine, the engine runs the model itself. Several ranks or data-parallel engines keep
    vLLM's processes and their thread binding, and so does an explicit `--distributed-executor-backend mp` (server.extra_args)."""
    from vllm.platforms.cpu import CpuPlatform
    from vllm.v1.executor.uniproc_executor import UniProcExecutor

    original = CpuPlatform.check_and_update_config.__func__

    def check_and_update_config(cls, vllm_config):
        parallel = vllm_config.parallel_config
        chosen = parallel.distributed_executor_backend  # "uni": vLLM's own choice for one rank
        original(cls, vllm_config)
        if chosen == "uni" and parallel.distributed_executor_backend == "mp" and parallel.world_size_across_dp == 1:
            parallel.distributed_executor_backend = "uni"

    CpuPlatform.check_and_update_config = classmethod(check_and_update_config)
    setattr(UniProcExecutor, MARK, True)  # the mark apply() reads: check_and_update_config carries another's


def _patch_cpu_engine_forks() -> None:
    """vLLM 0.32's CPU platform makes every process it starts (the engine, and with several ranks their
    workers) with `spawn`: a fresh Python that imports vLLM and torch again, 8-9 s of every start on this
    machine, and with two ranks two more at once on two cores. When vLLM starts them, none of its processes
    has run model code, so none has an OpenMP thread pool a child could inherit: they are forked, as vLLM
    does on a GPU without CUDA initialised, and each binds its own threads afterwards as before (the
    parallel tests check both ranks' binding and their replies against PEFT)."""
    from vllm.platforms.cpu import CpuPlatform
    from vllm.utils import system_utils

    original = CpuPlatform.check_and_update_config.__func__

    def check_and_update_config(cls, vllm_config):
        original(cls, vllm_config)
        os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "fork"  # read by vLLM's get_mp_context

    CpuPlatform.check_and_update_config = classmethod(check_and_update_config)
    setattr(system_utils.get_mp_context, MARK, True)  # the mark apply() reads


def _patch_cpu_compile_with_lora() -> None:
    """vLLM 0.32 turns compilation off on CPU whenever LoRA is on, because its CPU punica path branches in
    Python on each step's batch. With the fused path above nothing in the model's forward does, so the
    platform's config is settled as without LoRA: compiled unless --enforce-eager."""
    from vllm.lora import model_manager
    from vllm.platforms.cpu import CpuPlatform

    original = CpuPlatform.check_and_update_config.__func__

    def check_and_update_config(cls, vllm_config):
        lora = vllm_config.lora_config
        if lora is None or not getattr(model_manager.from_layer, MARK, False):  # vLLM's own path: no compile
            return original(cls, vllm_config)
        object.__setattr__(vllm_config, "lora_config", None)
        try:
            return original(cls, vllm_config)
        finally:
            object.__setattr__(vllm_config, "lora_config", lora)

    setattr(check_and_update_config, MARK, True)
    CpuPlatform.check_and_update_config = classmethod(check_and_update_config)


class _Loaded:
    """A compiled function torch loaded from vLLM's compile cache, with the no-op `finalize_loading` vLLM
    calls on it (there is nothing left to finalize: torch's own inductor artifact is ready as loaded)."""

    def __init__(self, fn):
        self._fn = fn

    def finalize_loading(self, vllm_config) -> None:
        return None

    def __call__(self, *args, **kwargs):
        return self._fn(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._fn, name)


def _patch_cpu_compile_cache_load() -> None:
    """On CPU vLLM 0.32 compiles with torch's plain inductor backend (DYNAMO_TRACE_ONCE) and saves it to
    its AOT compile cache, but on load it calls `finalize_loading`, which only its own backend's artifact
    has: every start logs "Compiling model again due to a load failure ... 'function' object has no
    attribute 'finalize_loading'" and compiles again (100 s here). The loaded artifact gets the no-op."""
    import torch

    original = torch.compiler.load_compiled_function

    def load_compiled_function(*args, **kwargs):
        loaded = original(*args, **kwargs)
        artifacts = getattr(loaded, "_artifacts", None)
        if artifacts is not None and not hasattr(artifacts.compiled_fn, "finalize_loading"):
            artifacts.compiled_fn = _Loaded(artifacts.compiled_fn)
        return loaded

    setattr(load_compiled_function, MARK, True)
    torch.compiler.load_compiled_function = load_compiled_function


def _patch_cpu_pipeline_eager() -> None:
    """vLLM 0.32's CPU worker skips its warm-up run in eager mode with a set KV cache size (limachat sets
    VLLM_CPU_KVCACHE_SPACE), and that run is where a later pipeline stage allocates the buffer its
    activations arrive in: with server.pipeline_parallel = 2 and enforce_eager, the first request killed
    the engine (`assert self.intermediate_tensors is not None`). The buffer is allocated on first use,
    as the warm-up would have."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    original = GPUModelRunner.sync_and_gather_intermediate_tensors

    def sync_and_gather_intermediate_tensors(self, num_tokens, intermediate_tensors, sync_self):
        if self.intermediate_tensors is None:
            self.intermediate_tensors = self.model.make_empty_intermediate_tensors(
                batch_size=self.max_num_tokens, dtype=self.model_config.dtype, device=self.device
            )
        return original(self, num_tokens, intermediate_tensors, sync_self)

    setattr(sync_and_gather_intermediate_tensors, MARK, True)
    GPUModelRunner.sync_and_gather_intermediate_tensors = sync_and_gather_intermediate_tensors
