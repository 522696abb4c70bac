"""limachat's patches to vLLM, loaded through vLLM's own plugin mechanism.

pyproject.toml registers `register` under the `vllm.general_plugins` entry point, which vLLM runs in
every process it starts (the API server and the engine core). It does nothing unless the process was
started by `limachat serve` (which sets LIMACHAT_VLLM_PLUGIN=1), so another program's vLLM in the same
environment is never patched.

Each patch states the vLLM versions and the platform it applies to, the upstream report, and when it can
go. Outside its range, on another platform, or when a symbol it patches is gone, it logs one warning
and stands aside: the server still starts, only without that fix. Every patch has a canary in
tests/test_vllm_plugin.py that runs vLLM's own, unpatched function on the case the patch fixes and
asserts the bug is still there; the day upstream fixes it, the canary fails and says to delete the patch.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

from limachat.serve.plugin_env import ENABLE, RANGE_OVERRIDE
from limachat.serve.vllm_compile import (
    _patch_cpu_compile_cache_load,
    _patch_cpu_compile_with_lora,
    _patch_cpu_engine_forks,
    _patch_cpu_engine_runs_the_model,
    _patch_cpu_inspect_in_process,
    _patch_cpu_pipeline_eager,
)
from limachat.serve.vllm_lora import (
    _patch_cpu_fused_lora,
    _patch_cpu_lora_logits,
    _patch_cpu_no_adapter_rows,
    _patch_refuse_unwrapped_adapter,
)
from limachat.serve.vllm_patch import MARK, Patch
from limachat.serve.vllm_routes import _patch_adapter_root, _patch_guard_every_route
from limachat.serve.vllm_sampling import _patch_cached_prompt_logprobs, _patch_cpu_seeded_rewind

log = logging.getLogger("vllm.limachat")  # under vLLM's own logger: its handlers, its log


def _say(level: int, message: str, *args) -> None:
    """Log under vLLM's logger; in the API server, which loads plugins before vLLM sets up its logging (and
    whose engine, forked with cpu-engine-forks, does not load them again), straight to the log (stderr)."""
    if log.hasHandlers():
        log.log(level, message, *args)
    else:
        print(f"{logging.getLevelName(level)} [vllm_plugin.py] {message % args}", file=sys.stderr, flush=True)


PATCHES = (
    Patch(
        "lora-logits-zero-delta",
        ">=0.32.0,<0.33",
        "cpu",
        ("vllm.lora.punica_wrapper.punica_cpu:PunicaWrapperCPU.add_lora_logits",),
        "https://github.com/vllm-project/vllm/issues/16668 (prompt logprobs with LoRA)",
        "when the canary test_lora_logits_still_break_on_prompt_logprobs fails",
        _patch_cpu_lora_logits,
    ),
    Patch(
        "lora-no-adapter-rows",
        ">=0.32.0,<0.33",
        "cpu",
        ("vllm.lora.ops.torch_ops.lora_ops:bgmv_shrink", "vllm.lora.punica_wrapper.punica_cpu:bgmv_shrink"),
        "https://github.com/vllm-project/vllm/pull/48421 (index -1 takes the last adapter's weights)",
        "when the canary test_a_row_without_adapter_still_gets_the_last_adapter fails",
        _patch_cpu_no_adapter_rows,
    ),
    Patch(
        "cpu-fused-lora",
        ">=0.32.0,<0.33",
        "cpu",
        (
            "vllm.lora.model_manager:from_layer",
            "vllm.lora.utils:from_layer",
            "vllm.lora.layers.base_linear:BaseLinearLayerWithLoRA._apply_lora_to_output",
            "vllm.lora.layers:RowParallelLinearWithLoRA.apply",
            "vllm.lora.punica_wrapper.punica_cpu:PunicaWrapperCPU.update_metadata",
        ),
        "https://github.com/vllm-project/vllm/blob/v0.32.0/vllm/lora/punica_wrapper/punica_cpu.py "
        "(`# TODO fuse these kernels` in add_shrink)",
        "when the canary test_cpu_lora_still_loops_slice_by_slice fails",
        _patch_cpu_fused_lora,
    ),
    Patch(
        "cpu-compile-with-lora",
        ">=0.32.0,<0.33",
        "cpu",
        ("vllm.platforms.cpu:CpuPlatform.check_and_update_config",),
        "https://github.com/vllm-project/vllm/blob/v0.32.0/vllm/platforms/cpu.py (LoRA forces CompilationMode.NONE)",
        "when the canary test_cpu_lora_still_turns_compilation_off fails",
        _patch_cpu_compile_with_lora,
    ),
    Patch(
        "cpu-compile-cache-load",
        ">=0.32.0,<0.33",
        "cpu",
        ("torch.compiler:load_compiled_function", "vllm.compilation.decorators:_try_load_aot_compiled_fn"),
        "https://github.com/vllm-project/vllm/blob/v0.32.0/vllm/compilation/decorators.py "
        "(finalize_loading on a plain inductor artifact)",
        "when the canary test_cpu_compile_cache_still_calls_finalize_loading fails",
        _patch_cpu_compile_cache_load,
    ),
    Patch(
        "refuse-unwrapped-adapter",
        ">=0.32.0,<0.33",
        "any",
        ("vllm.lora.worker_manager:WorkerLoRAManager._load_adapter",),
        "https://github.com/vllm-project/vllm/blob/v0.32.0/vllm/lora/worker_manager.py (no check of the weights "
        "against --lora-target-modules)",
        "when the canary test_vllm_still_drops_weights_outside_the_target_modules fails",
        _patch_refuse_unwrapped_adapter,
    ),
    Patch(
        "cached-prompt-logprobs",
        ">=0.32.0,<0.33",
        "any",
        ("vllm.v1.request:Request.get_skip_reading_prefix_cache", "vllm.v1.outputs:LogprobsTensors.empty_cpu"),
        "https://github.com/vllm-project/vllm/blob/v0.32.0/vllm/sampling_params.py "
        "(prompt logprobs skip reading the prefix cache)",
        "when the canary test_prompt_logprobs_still_skip_the_prefix_cache fails",
        _patch_cached_prompt_logprobs,
    ),
    Patch(
        "guard-every-route",
        ">=0.32.0,<0.33",
        "any",
        (
            "vllm.entrypoints.serve.middleware.authenticate:AuthenticationMiddleware.__call__",
            "vllm.entrypoints.serve.middleware.authenticate:AuthenticationMiddleware.verify_token",
        ),
        "https://github.com/vllm-project/vllm/issues/58144 (--api-key is bypassed by /invocations)",
        "when the canary test_vllm_still_answers_invocations_without_the_key fails",
        _patch_guard_every_route,
    ),
    Patch(
        "adapter-root",
        ">=0.32.0,<0.33",
        "any",
        (
            "vllm.entrypoints.openai.models.serving:OpenAIServingModels._check_load_lora_adapter_request",
            "vllm.entrypoints.serve:create_error_response",
        ),
        "https://github.com/vllm-project/vllm/blob/v0.32.0/vllm/entrypoints/openai/models/serving.py "
        "(runtime LoRA loading takes any path)",
        "when the canary test_vllm_still_loads_adapters_from_any_path fails",
        _patch_adapter_root,
    ),
    Patch(
        "cpu-inspect-in-process",
        ">=0.32.0,<0.33",
        "cpu",
        ("vllm.model_executor.models.registry:_run_in_subprocess",),
        "https://github.com/vllm-project/vllm/blob/v0.32.0/vllm/model_executor/models/registry.py "
        "(the model class is inspected in a subprocess to keep CUDA out of the API server, on CPU too)",
        "when the canary test_the_model_class_is_still_inspected_in_a_subprocess fails",
        _patch_cpu_inspect_in_process,
    ),
    Patch(
        "cpu-engine-runs-the-model",
        ">=0.32.0,<0.33",
        "cpu",
        ("vllm.v1.executor.uniproc_executor:UniProcExecutor", "vllm.platforms.cpu:CpuPlatform.check_and_update_config"),
        'https://github.com/vllm-project/vllm/blob/v0.32.0/vllm/platforms/cpu.py (one rank\'s "uni" executor '
        'forced to "mp"); https://github.com/vllm-project/vllm/pull/34670 (mp\'s worker queue spin-waits)',
        "when the canary test_cpu_still_runs_one_rank_in_a_worker_process fails",
        _patch_cpu_engine_runs_the_model,
    ),
    Patch(
        "cpu-engine-forks",
        ">=0.32.0,<0.33",
        "cpu",
        ("vllm.utils.system_utils:get_mp_context", "vllm.platforms.cpu:CpuPlatform.check_and_update_config"),
        "https://github.com/vllm-project/vllm/blob/v0.32.0/vllm/platforms/cpu.py "
        "(VLLM_WORKER_MULTIPROC_METHOD set to spawn for every CPU layout)",
        "when the canary test_cpu_still_spawns_every_process fails",
        _patch_cpu_engine_forks,
    ),
    Patch(
        "cpu-pipeline-eager",
        ">=0.32.0,<0.33",
        "cpu",
        (
            "vllm.v1.worker.gpu_model_runner:GPUModelRunner.sync_and_gather_intermediate_tensors",
            "vllm.v1.worker.cpu_worker:CPUWorker._should_warm_up_model",
        ),
        "https://github.com/vllm-project/vllm/blob/v0.32.0/vllm/v1/worker/cpu_worker.py "
        "(eager mode skips the warm-up that allocates a pipeline stage's input buffer)",
        "when the canary test_a_later_pipeline_stage_still_needs_the_warm_up fails",
        _patch_cpu_pipeline_eager,
    ),
    Patch(
        "cpu-seeded-rewind",
        ">=0.32.0,<0.33",
        "cpu",
        ("vllm.v1.worker.gpu_model_runner:GPUModelRunner._bookkeeping_sync",),
        "https://github.com/vllm-project/vllm-rbln/pull/1025 (the same fix in the RBLN backend)",
        "when the canary test_a_cpu_generator_is_still_rewound fails",
        _patch_cpu_seeded_rewind,
    ),
)


def _resolve(symbol: str):
    module, _, path = symbol.partition(":")
    obj = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _platform() -> str:
    from vllm.platforms import current_platform

    return "cpu" if current_platform.is_cpu() else str(current_platform.device_type)


def why_not(patch: Patch, version: str, platform: str) -> str | None:
    """Why `patch` stands aside on this vLLM (None: it applies)."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    versions = os.environ.get(RANGE_OVERRIDE) or patch.versions
    if Version(version) not in SpecifierSet(versions):
        return f"vLLM {version} is outside {versions}"
    if patch.platform != "any" and platform != patch.platform:
        return f"it is for vLLM's {patch.platform} backend, this is {platform}"
    for symbol in patch.symbols:
        try:
            _resolve(symbol)
        except (ImportError, AttributeError):
            return f"{symbol} is gone"
    return None


def apply(patches=PATCHES, version: str | None = None, platform: str | None = None) -> list[str]:
    """Apply each patch that fits this vLLM; one warning names those that stand aside, and why.
    Returns the names applied. Safe to call twice (vLLM may load plugins more than once)."""
    import vllm

    version = version or vllm.__version__
    platform = platform or _platform()
    applied, aside = [], []
    for patch in patches:
        reason = why_not(patch, version, platform)
        if reason is None and getattr(_resolve(patch.symbols[0]), MARK, False):
            applied.append(patch.name)
            continue
        if reason is None:
            try:
                patch.apply()
            except (ImportError, AttributeError) as e:  # vLLM moved something the patch reads
                reason = f"{type(e).__name__}: {e}"
        if reason is None:
            applied.append(patch.name)
        else:
            aside.append(f"{patch.name} ({reason}; upstream: {patch.upstream})")
    if aside:
        _say(
            logging.WARNING,
            "limachat's vLLM patches standing aside, the server runs without them: %s",
            "; ".join(aside),
        )
    return applied


def register() -> None:
    """The `vllm.general_plugins` entry point."""
    if os.environ.get(ENABLE) != "1":
        return
    names = apply()
    _say(logging.INFO, "limachat's vLLM patches applied: %s", ", ".join(names) or "none")
