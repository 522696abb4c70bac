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

from limachat.serve.plugin_env import ADAPTER_ROOTS, CACHED_PROMPT, ENABLE, RANGE_OVERRIDE, STATIC_ADAPTERS

MARK = "_limachat_patch"
log = logging.getLogger("vllm.limachat")  # under vLLM's own logger: its handlers, its log


@dataclass(frozen=True)
class Patch:
    name: str
    versions: str  # a PEP 440 specifier of the vLLM versions it was written for and checked on
    platform: str  # "cpu": the patch is for vLLM's CPU backend only; "any": every backend
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


# -- LoRA on CPU at one shrink and one expand per module ----------------------------------------------
# vLLM 0.32's CPU punica path loops over a packed module's slices (qkv: 3, gate_up: 2) and, per slice,
# repeats the indices, gathers each token's adapter weights, runs an einsum and adds into a slice: some
# 2,500 small eager ops per decode step on a 30-layer model, and Python branches that compilation would
# freeze. Here each linear LoRA layer keeps its adapter slots in two fused tensors:
#   A: (slots, slices, rank, in)          one row block per slot and slice
#   B: (slots, slices, rank, sum of outs) block-diagonal: slice s's rows write only slice s's columns
# vLLM's own `lora_a_stacked[s]` / `lora_b_stacked[s]` become views into them, so its set_lora and
# reset_lora (and its kernels, where they still run) write and read the same memory. A forward is then
#   h = x @ A.T;  h *= mask (per token and slot: 1 for the token's adapter, 0 elsewhere);  y += h @ B
# two matmuls and a multiply per module, no index of -1 to special-case (its mask row is zero), and
# nothing data-dependent in Python: it compiles.
FUSED = "_limachat_fused"  # on a layer: (A as (slots*slices*rank, in), B as (slots*slices*rank, outs), slots)
MASK = "_limachat_slot_mask"  # on the punica wrapper: (max tokens, slots), rebuilt by each update_metadata


def fuse_layer(layer) -> bool:
    """Re-home a linear LoRA layer's adapter slots into the fused A and B (see above); False, and the layer
    untouched, where its shapes are not the plain kind (tensor-parallel shards, ranks that differ)."""
    import torch

    a, b = layer.lora_a_stacked, layer.lora_b_stacked
    if getattr(layer, "tp_size", 1) != 1 or len(a) != len(b) or not a:
        return False
    slots, _, rank, width = a[0].shape
    outs = [t.shape[2] for t in b]
    if any(t.shape != a[0].shape for t in a) or any(t.shape[0] != slots or t.shape[3] != rank for t in b):
        return False
    n = len(a)
    big_a = torch.zeros(slots, n, rank, width, dtype=a[0].dtype, device=a[0].device)
    big_b = torch.zeros(slots, n, rank, sum(outs), dtype=b[0].dtype, device=b[0].device)
    big_a[:] = torch.stack([t[:, 0] for t in a], dim=1)
    views_b, start = [], 0
    for s, out in enumerate(outs):
        view = big_b[:, s : s + 1, :, start : start + out].transpose(2, 3)  # (slots, 1, out, rank), as vLLM's
        view.copy_(b[s])
        views_b.append(view)
        start += out
    layer.lora_a_stacked = tuple(big_a[:, s : s + 1] for s in range(n))
    layer.lora_b_stacked = tuple(views_b)
    setattr(layer, FUSED, (big_a.view(-1, width), big_b.view(-1, sum(outs)), slots))
    return True


def fused_delta(layer, x, output):
    """output += the LoRA delta of each token's adapter, in place; returns output."""
    import torch

    big_a, big_b, slots = getattr(layer, FUSED)
    rows = x.view(-1, x.shape[-1])
    flat = output.view(-1, output.shape[-1])
    mask = getattr(layer.punica_wrapper, MASK)[: rows.shape[0], :slots]  # vLLM passes slots + 1 columns
    if not torch.compiler.is_compiling() and layer.punica_wrapper.no_lora:
        return output  # eager: a step in which no request has an adapter adds nothing
    h = rows.to(big_a.dtype) @ big_a.t()
    h = (h.view(rows.shape[0], slots, -1) * mask.unsqueeze(-1).to(h.dtype)).view(rows.shape[0], -1)
    flat.add_((h @ big_b).to(flat.dtype))
    return output


def _patch_cpu_fused_lora() -> None:
    from vllm.lora import model_manager, utils
    from vllm.lora.layers import (
        ColumnParallelLinearWithLoRA,
        MergedColumnParallelLinearWithLoRA,
        MergedQKVParallelLinearWithLoRA,
        QKVParallelLinearWithLoRA,
        ReplicatedLinearWithLoRA,
        RowParallelLinearWithLoRA,
    )
    from vllm.lora.layers.base_linear import BaseLinearLayerWithLoRA
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    plain = (
        ColumnParallelLinearWithLoRA,
        MergedColumnParallelLinearWithLoRA,
        QKVParallelLinearWithLoRA,
        MergedQKVParallelLinearWithLoRA,
        ReplicatedLinearWithLoRA,
        RowParallelLinearWithLoRA,
    )
    original_from_layer = utils.from_layer

    def from_layer(layer, max_loras, lora_config, packed_modules_list, model_config=None):
        new = original_from_layer(layer, max_loras, lora_config, packed_modules_list, model_config)
        if type(new) in plain and not lora_config.fully_sharded_loras:
            fuse_layer(new)
        return new

    original_apply_lora = BaseLinearLayerWithLoRA._apply_lora_to_output

    def _apply_lora_to_output(self, x, output):
        if getattr(self, FUSED, None) is None:
            return original_apply_lora(self, x, output)
        return fused_delta(self, x, output)

    original_row_apply = RowParallelLinearWithLoRA.apply

    def row_apply(self, x, bias=None):
        if getattr(self, FUSED, None) is None:
            return original_row_apply(self, x, bias)
        return fused_delta(self, x, self._get_quant_method().apply(self.base_layer, x, bias))

    original_update = PunicaWrapperCPU.update_metadata

    def update_metadata(self, mapping, lora_index_to_id, max_loras, vocab_size, **kwargs):
        import torch

        original_update(self, mapping, lora_index_to_id, max_loras, vocab_size, **kwargs)
        mask = getattr(self, MASK, None)
        if mask is None or mask.shape[1] != max_loras:
            mask = torch.zeros(self._token_lora_indices.shape[0], max_loras, dtype=torch.float32, device=self.device)
            setattr(self, MASK, mask)
        indices = self.token_lora_indices
        mask.zero_()
        mask[: indices.shape[0]] = (indices.unsqueeze(1) == torch.arange(max_loras, device=indices.device)).to(
            mask.dtype
        )
        # In eager mode a step with no adapter skips the delta (compiled, the zero mask does the same work).
        self.no_lora = not bool((indices >= 0).any())

    for fn in (from_layer, _apply_lora_to_output, row_apply, update_metadata):
        setattr(fn, MARK, True)
    utils.from_layer = from_layer
    model_manager.from_layer = from_layer  # imported there by name
    BaseLinearLayerWithLoRA._apply_lora_to_output = _apply_lora_to_output
    RowParallelLinearWithLoRA.apply = row_apply
    PunicaWrapperCPU.update_metadata = update_metadata


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


def uncovered_modules(lora_modules, wrapped, packed: dict[str, list[str]], held=lambda name: True) -> list[str]:
    """The modules an adapter has weights for that this server did not wrap (`--lora-target-modules`).
    `held(name)`: whether this rank holds the module at all; under pipeline parallelism another stage
    holds the other layers, and wraps them there."""
    parent_of = {child: parent for parent, children in packed.items() for child in children}
    missing = []
    for name in lora_modules:
        head, _, leaf = name.rpartition(".")
        packed_name = f"{head}.{parent_of[leaf]}" if head and leaf in parent_of else None
        if name not in wrapped and packed_name not in wrapped and held(packed_name or name):
            missing.append(name)
    return sorted(missing)


def _holds(model):
    """Whether `model` (this rank's part of it) has a module of that name: not a pipeline stage's
    placeholder (vLLM's PPMissingLayer, which has no children) for a layer another rank holds."""

    def held(name: str) -> bool:
        try:
            model.get_submodule(name)
        except AttributeError:
            return False
        return True

    return held


def _patch_refuse_unwrapped_adapter() -> None:
    """vLLM applies an adapter only on the modules it wrapped at start; weights for any other module are
    dropped without a word, so an adapter on more layers than `--lora-target-modules` named would answer
    as a different model. Loading one is refused, with one line that says how to serve it."""
    from vllm.lora.worker_manager import WorkerLoRAManager

    original = WorkerLoRAManager._load_adapter

    def _load_adapter(self, lora_request):
        lora = original(self, lora_request)
        manager = self._adapter_manager
        if manager.lora_config.target_modules is None:
            return lora
        missing = uncovered_modules(lora.loras, manager.modules, manager.packed_modules_mapping, _holds(manager.model))
        if missing:
            raise ValueError(
                f"adapter {lora_request.lora_name!r} has LoRA weights on {len(missing)} modules this server "
                f"does not wrap (first: {missing[0]}); restart `limachat serve`, which wraps every module its "
                "adapters touch"
            )
        return lora

    setattr(_load_adapter, MARK, True)
    WorkerLoRAManager._load_adapter = _load_adapter


def adapter_refusal(path: str, roots: list[str], static: list[str]) -> str | None:
    """Why an adapter at `path` may not be loaded (None: it may): only folders under one of `roots`
    (resolved, so neither `..` nor a symlink leads out) and the adapters the server was started with."""
    from pathlib import Path

    where = Path(path).resolve()
    if str(where) in static or any(where.is_relative_to(Path(root).resolve()) for root in roots):
        return None
    return f"adapters are loaded only from {' or '.join(roots)} (server.adapter_dirs adds folders); {path} is outside"


def _patch_adapter_root() -> None:
    """vLLM's runtime LoRA loading (VLLM_ALLOW_RUNTIME_LORA_UPDATING, on for the CITING rounds and the
    app's "serve it") loads any path the caller names, from anywhere on the machine. Under `limachat
    serve` only the home's checkpoints folder (and server.adapter_dirs) is allowed: any other path gets
    HTTP 400 with one line."""
    from http import HTTPStatus

    from vllm.entrypoints.openai.models.serving import OpenAIServingModels
    from vllm.entrypoints.serve import create_error_response

    original = OpenAIServingModels._check_load_lora_adapter_request

    async def _check_load_lora_adapter_request(self, request):
        roots = [r for r in os.environ.get(ADAPTER_ROOTS, "").split(os.pathsep) if r]
        if roots and request.lora_path:
            why = adapter_refusal(request.lora_path, roots, os.environ.get(STATIC_ADAPTERS, "").split(os.pathsep))
            if why:
                return create_error_response(
                    message=why, err_type="InvalidUserInput", status_code=HTTPStatus.BAD_REQUEST
                )
        return await original(self, request)

    setattr(_check_load_lora_adapter_request, MARK, True)
    OpenAIServingModels._check_load_lora_adapter_request = _check_load_lora_adapter_request


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


OPEN_PATHS = ("/health", "/ping", "/version", "/metrics")  # what the port answers without the key: probes, counters


def _patch_guard_every_route() -> None:
    """vLLM's `--api-key` (VLLM_API_KEY) guards only paths under /v1, /v2, /inference and /cohere. The same
    server answers completions on /invocations and loads and unloads adapters on /adapters (its SageMaker
    routes), and tokenizes on /tokenize, all without the key. Under `limachat serve` every path but the
    probes and counters of OPEN_PATHS needs the key."""
    from starlette.datastructures import Headers
    from starlette.responses import JSONResponse
    from vllm.entrypoints.serve.middleware.authenticate import AuthenticationMiddleware

    def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket") and scope.get("method") != "OPTIONS":
            path = scope["path"].removeprefix(scope.get("root_path", ""))
            if path not in OPEN_PATHS and not self.verify_token(Headers(scope=scope)):
                return JSONResponse(content={"error": "Unauthorized"}, status_code=401)(scope, receive, send)
        return self.app(scope, receive, send)

    setattr(__call__, MARK, True)
    AuthenticationMiddleware.__call__ = __call__


def _patch_cached_prompt_logprobs() -> None:
    """vLLM 0.32 recomputes the whole prompt of every request that asks for prompt log-probabilities, so
    that each position gets one: scoring a reply's fluency re-ran its whole conversation (0.7-1.0 s of
    engine time here), though the conversation was in the prefix cache from the turn before. A request
    that sends `vllm_xargs: {"limachat_cached_prompt": 1}` reads the cache like any other; the positions
    the cache covered come back as token 0 with log-probability 0 (zero-filled, where vLLM leaves them
    uninitialised), and limachat.serve.fluency asks again without the key if a reply's position is among
    them."""
    from vllm.v1.outputs import LogprobsTensors
    from vllm.v1.request import Request

    original_skip = Request.get_skip_reading_prefix_cache

    def get_skip_reading_prefix_cache(self) -> bool:
        params = self.sampling_params
        if params is not None and (params.extra_args or {}).get(CACHED_PROMPT):
            return False
        return original_skip(self)

    def empty_cpu(num_positions: int, num_tokens_per_position: int) -> LogprobsTensors:
        import torch
        from vllm.utils.torch_utils import PIN_MEMORY

        shape = (num_positions, num_tokens_per_position)
        return LogprobsTensors(
            logprob_token_ids=torch.zeros(shape, dtype=torch.int32, pin_memory=PIN_MEMORY),
            logprobs=torch.zeros(shape, dtype=torch.float32, pin_memory=PIN_MEMORY),
            selected_token_ranks=torch.zeros(num_positions, dtype=torch.int32, pin_memory=PIN_MEMORY),
        )

    setattr(get_skip_reading_prefix_cache, MARK, True)
    Request.get_skip_reading_prefix_cache = get_skip_reading_prefix_cache
    LogprobsTensors.empty_cpu = staticmethod(empty_cpu)


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
        log.warning("limachat's vLLM patches standing aside, the server runs without them: %s", "; ".join(aside))
    return applied


def register() -> None:
    """The `vllm.general_plugins` entry point."""
    if os.environ.get(ENABLE) != "1":
        return
    names = apply()
    log.info("limachat's vLLM patches applied: %s", ", ".join(names) or "none")
