"""A checkpoint is configuration, not code: a name the UI shows and an endpoint that serves it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Checkpoint(BaseModel):
    """One model behind an OpenAI-compatible `/v1/chat/completions`.

    `base_url` None means the local server that `limachat serve` starts. `model` is the id the
    endpoint knows (a vLLM LoRA adapter name, a served model name, a hosted model id)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    model: str = Field(min_length=1)
    base_url: str | None = None
    api_key: str | None = None
    # Sampling keys this endpoint rejects or cannot apply, e.g. ["repetition_penalty"] for hosted APIs,
    # ["generated_repetition_penalty"] for any endpoint that is not `limachat serve` (llama.cpp, APIs).
    omit_params: list[str] = []
    preset: str | None = None  # sampling preset for this checkpoint (default: sampling.preset)
    # Whether the endpoint takes OpenAI's `response_format` JSON schema (vLLM, llama.cpp's server and
    # OpenAI's API do): a judge's answer is then constrained to parse; without it, it is parsed.
    structured_outputs: bool = True
