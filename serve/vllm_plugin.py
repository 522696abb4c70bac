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
from collections.abc import Callable
from dataclasses import dataclass

ENABLE = "LIMACHAT_VLLM_PLUGIN"  # set to 1 by `limachat serve` (serve/server.py)
# Replaces every patch's own version range: lets a test check how the plugin stands aside.
RANGE_OVERRIDE = "LIMACHAT_VLLM_PATCH_RANGE"
MARK = "_limachat_patch"
log = logging.getLogger("vllm.limachat")  # under vLLM's own logger: its handlers, its log


@dataclass(frozen=True)
class Patch:
    name: str
    versions: str  # a PEP 440 specifier of the vLLM versions it was written for and checked on
    platform: str  # "cpu": the patch is for vLLM's CPU backend only
    symbols: tuple[str, ...]  # "module:attribute.path" it replaces or reads; all must exist
    upstream: str  # the report upstream
    remove_when: str
    apply: Callable[[], None]


def _patch_cpu_lora_logits() -> None:
    """vLLM 0.32's CPU LoRA wrapper applies the LM head's LoRA with one index per *request*; for prompt
    log-probabilities (fluency scoring) it gets one row per *prompt token*, and the engine dies (einsum
    size mismatch) once that request shares a batch. limachat's adapters put no LoRA on the LM head (PEFT
    "all-linear" leaves it out), so the delta is zero: when the shapes disagree and every LM-head LoRA B
    is zero, the delta is skipped; otherwise vLLM's own error stands."""
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    original = PunicaWrapperCPU.add_lora_logits

    def add_lora_logits(self, y, x, lora_a_stacked, lora_b_stacked, scale, *args, **kwargs):
        rows, indices = x.view(-1, x.shape[-1]).size(0), self.sampler_indices.numel()
        if indices not in (1, rows) and not bool(lora_b_stacked.any()):
            return None  # a zero delta: the logits stay the base's (updated in place on CPU)
        return original(self, y, x, lora_a_stacked, lora_b_stacked, scale, *args, **kwargs)

    setattr(add_lora_logits, MARK, True)
    PunicaWrapperCPU.add_lora_logits = add_lora_logits


def _patch_cpu_no_adapter_rows() -> None:
    """vLLM 0.32's CPU LoRA kernels select each row's adapter weights with `weights[index]`, and a request
    with no adapter has index -1: Python indexing hands it the *last* adapter slot's weights, so `base`
    answered like the last adapter loaded. The shrink step zeroes the rows whose index is -1; the expand
    step then adds nothing to them."""
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    original = lora_ops.bgmv_shrink

    def bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling: float = 1.0):
        none = lora_indices_tensor < 0
        if not bool(none.any()):
            return original(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling)
        original(inputs, lora_a_weights, output_tensor, lora_indices_tensor.clamp(min=0), scaling)
        if none.numel() == 1:
            output_tensor.zero_()
        else:
            output_tensor[none] = 0

    setattr(bgmv_shrink, MARK, True)
    lora_ops.bgmv_shrink = bgmv_shrink  # sgmv_shrink calls it through this module
    punica_cpu.bgmv_shrink = bgmv_shrink  # the CPU wrapper imported it by name


def _patch_cpu_seeded_rewind() -> None:
    """When a request's sampled token is thrown away (its prompt was only partly prefilled in that step,
    as happens once several conversations arrive together), vLLM 0.32 rewinds the request's generator
    with `set_offset`, which only CUDA's Philox generators have: a CPU generator raises "CPU Generator
    does not use offset" and the engine dies with every reply in flight. The rewind is skipped for CPU
    generators: a seeded reply stays seeded, but its draw then depends on how it was batched."""
    import numpy as np
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    original = GPUModelRunner._bookkeeping_sync

    def _bookkeeping_sync(self, *args, **kwargs):
        batch = self.input_batch
        discarded = np.nonzero(self.discard_request_mask.np[: batch.num_reqs])[0]
        held = {
            int(i): batch.generators.pop(int(i))
            for i in discarded
            if int(i) in batch.generators and batch.generators[int(i)].device.type == "cpu"
        }
        try:
            return original(self, *args, **kwargs)
        finally:
            batch.generators.update(held)

    setattr(_bookkeeping_sync, MARK, True)
    GPUModelRunner._bookkeeping_sync = _bookkeeping_sync


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
    if platform != patch.platform:
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
        log.warning("limachat's vLLM patches standing aside, the server runs without them: %s", "; ".join(aside))
    return applied


def register() -> None:
    """The `vllm.general_plugins` entry point."""
    if os.environ.get(ENABLE) != "1":
        return
    names = apply()
    log.info("limachat's vLLM patches applied: %s", ", ".join(names) or "none")
