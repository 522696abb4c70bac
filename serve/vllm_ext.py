"""LIMA's repetition penalty inside vLLM. `limachat serve` passes
`--logits-processors limachat.serve.vllm_ext:GeneratedTokensPenalty`, which imports this module in
the engine's worker: a custom logits processor that penalises only the tokens the reply has generated
so far, never the prompt.

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

The fixes limachat applies to vLLM itself are in limachat/serve/vllm_plugin.py.

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
