"""limachat's patches to vLLM's LoRA path on CPU (registered in serve/vllm_plugin.py): the LM head's zero delta
under prompt log-probabilities, rows without an adapter, the fused adapter slots, and the refusal of an
adapter on modules the server did not wrap."""

from __future__ import annotations

from limachat.serve.vllm_patch import MARK


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
