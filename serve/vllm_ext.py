"""What limachat adds to the vLLM server process. `limachat serve` passes
`--logits-processors limachat.serve.vllm_ext:GeneratedTokensPenalty`, which imports this module in
the engine's worker.

1. LIMA's repetition penalty inside vLLM: a custom logits processor that penalises only the tokens
the reply has generated so far, never the prompt.

vLLM's own `repetition_penalty` divides the logit of every token seen in the prompt *or* the output.
In a chat the prompt is the whole conversation, so spaces, punctuation and common words are all
penalised, more so every turn, and a small model's replies fall apart by the third turn. LIMA
(Zhou et al., 2023, section 2) applies its penalty of 1.2 to previously generated tokens.

A request selects it with `vllm_xargs: {"generated_repetition_penalty": 1.2}` (the chat client puts
the sampling key `generated_repetition_penalty` there). The arithmetic is vLLM's and HF's: a positive
logit is divided by the penalty, a negative one multiplied.

In a conversation the model generated its earlier replies too. With the preset key
`penalty_scope = "conversation"` the client also sends `prior_reply_ids`, the token ids of the
conversation's earlier assistant turns, and they are penalised like the reply's own; the user's and
the system's text never are (a token only they contain is not in the list).

2. A fix for prompt log-probabilities with LoRA on CPU (fluency scoring, limachat.serve.fluency).
vLLM 0.32's CPU LoRA wrapper applies the LM head's LoRA with one index per *request*; for prompt
log-probabilities it gets one row per *prompt token*, and the engine dies (einsum size mismatch)
as soon as that request shares a batch with others. limachat's adapters put no LoRA on the LM head
(PEFT "all-linear" leaves it out), so the delta is zero: when the shapes disagree and every LM-head
LoRA B is zero, the delta is skipped; otherwise vLLM's own error stands.

3. A fix for requests without an adapter on a LoRA-enabled CPU server. vLLM 0.32's CPU LoRA kernels
(`vllm.lora.ops.torch_ops`) select each row's adapter weights with `weights[index]`, and a request
with no adapter has index -1: Python indexing hands it the *last* adapter slot's weights. With
`--max-loras` equal to the number of adapters that slot is filled, so `base` answered exactly like
the last adapter loaded (`dialogue`). The shrink step now zeroes the rows whose index is -1; the
expand step then adds nothing to them.

4. A fix for seeded requests on CPU. When a request's sampled token is thrown away (its prompt was
only partly prefilled in that step, as happens once several conversations arrive together), vLLM
0.32 rewinds the request's random generator with `set_offset`, which only CUDA's Philox generators
have: a CPU generator raises "CPU Generator does not use offset" and the engine dies, taking every
reply in flight with it. The rewind is skipped for CPU generators (the same fix as vllm-rbln's
PR #1025): a seeded reply then stays seeded, but its draw depends on how it was batched.

This module imports vLLM: only the vLLM server process loads it.
"""

from __future__ import annotations

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

ARG = "generated_repetition_penalty"
PRIOR = "prior_reply_ids"  # scope `conversation`: the token ids of the conversation's earlier replies


def _penalty(params: SamplingParams) -> float | None:
    value = (params.extra_args or {}).get(ARG)
    return None if value is None or float(value) == 1.0 else float(value)


class GeneratedTokensPenalty(LogitsProcessor):
    """Per request: penalty > 0 on the ids in that request's own output so far."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams):
        value = (sampling_params.extra_args or {}).get(ARG)
        if value is None:
            return
        try:
            ok = float(value) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{ARG} must be a number above 0, not {value!r}")
        prior = (sampling_params.extra_args or {}).get(PRIOR)
        if prior is not None and not (isinstance(prior, list) and all(isinstance(i, int) and i >= 0 for i in prior)):
            raise ValueError(f"{PRIOR} must be a list of token ids (integers from 0)")

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        # batch row -> (penalty, the request's live list of output token ids, earlier replies' ids)
        self.rows: dict[int, tuple[float, list[int], frozenset[int]]] = {}

    def is_argmax_invariant(self) -> bool:
        return False  # it can change which token is most likely

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        def new(params, prompt_ids, output_ids):
            penalty = _penalty(params)
            if penalty is None:
                return None
            return penalty, output_ids, frozenset((params.extra_args or {}).get(PRIOR) or ())

        process_dict_updates(self.rows, batch_update, new)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        vocab = logits.shape[-1]
        for row, (penalty, output_ids, prior) in self.rows.items():
            seen_ids = prior.union(output_ids)
            if not seen_ids:
                continue
            ids = torch.tensor(sorted(i for i in seen_ids if i < vocab), dtype=torch.long, device=logits.device)
            seen = logits[row, ids]
            logits[row, ids] = torch.where(seen > 0, seen / penalty, seen * penalty)
        return logits


def _patch_cpu_lora_logits() -> None:
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    original = PunicaWrapperCPU.add_lora_logits
    if getattr(original, "_limachat", False):
        return

    def add_lora_logits(self, y, x, lora_a_stacked, lora_b_stacked, scale, *args, **kwargs):
        rows, indices = x.view(-1, x.shape[-1]).size(0), self.sampler_indices.numel()
        if indices not in (1, rows) and not bool(lora_b_stacked.any()):
            return None  # a zero delta: the logits stay the base's (updated in place on CPU)
        return original(self, y, x, lora_a_stacked, lora_b_stacked, scale, *args, **kwargs)

    add_lora_logits._limachat = True
    PunicaWrapperCPU.add_lora_logits = add_lora_logits


def _patch_cpu_no_adapter_rows() -> None:
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    original = lora_ops.bgmv_shrink
    if getattr(original, "_limachat", False):
        return

    def bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling: float = 1.0):
        none = lora_indices_tensor < 0
        if not bool(none.any()):
            return original(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling)
        original(inputs, lora_a_weights, output_tensor, lora_indices_tensor.clamp(min=0), scaling)
        if none.numel() == 1:
            output_tensor.zero_()
        else:
            output_tensor[none] = 0

    bgmv_shrink._limachat = True
    lora_ops.bgmv_shrink = bgmv_shrink  # sgmv_shrink calls it through this module
    punica_cpu.bgmv_shrink = bgmv_shrink  # the CPU wrapper imported it by name


def _patch_cpu_seeded_rewind() -> None:
    import numpy as np
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    original = GPUModelRunner._bookkeeping_sync
    if getattr(original, "_limachat", False):
        return

    def _bookkeeping_sync(self, *args, **kwargs):
        batch = self.input_batch
        discarded = np.nonzero(self.discard_request_mask.np[:batch.num_reqs])[0]
        held = {int(i): batch.generators.pop(int(i)) for i in discarded
                if int(i) in batch.generators and batch.generators[int(i)].device.type == "cpu"}
        try:
            return original(self, *args, **kwargs)
        finally:
            batch.generators.update(held)

    _bookkeeping_sync._limachat = True
    GPUModelRunner._bookkeeping_sync = _bookkeeping_sync


_patch_cpu_lora_logits()
_patch_cpu_no_adapter_rows()
_patch_cpu_seeded_rewind()
