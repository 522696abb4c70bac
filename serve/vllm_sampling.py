"""limachat's patches to vLLM's sampling and log-probabilities (registered in serve/vllm_plugin.py): a seeded
CPU generator that is not rewound, and prompt log-probabilities read from the prefix cache."""

from __future__ import annotations

from limachat.serve.plugin_env import CACHED_PROMPT
from limachat.serve.vllm_patch import MARK


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
