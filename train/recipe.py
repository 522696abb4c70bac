"""Training settings and presets. `lima` is the paper's recipe (Zhou et al., 2023, section 2)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from limachat.layout import DIALOGUE, VARIANTS

SMALL_MODEL_PARAMS = 30e9  # LIMA: residual dropout tops out at 0.3 for the 65B model, 0.2 for smaller ones


class TrainConfig(BaseModel):
    """Everything one training run needs; saved as train_config.json beside the checkpoint."""

    model_config = ConfigDict(extra="forbid")

    variant: str = DIALOGUE  # one of layout.VARIANTS
    method: Literal["lora", "full"] = "lora"
    recipe: Literal["lima", "lora-cpu"] = "lora-cpu"
    learning_rate: float = Field(2e-4, gt=0)
    final_learning_rate: float = Field(2e-5, ge=0)  # linear decay ends here
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    weight_decay: float = 0.1
    warmup_steps: int = 0
    batch_size: int = Field(32, ge=1)  # examples per optimizer step
    # Examples per forward pass; gradient accumulation makes up the batch. 1 on CPU: no padding, and
    # a bundled chain of 1,000 tokens batched with short answers padded them all to its length.
    micro_batch_size: int = Field(4, ge=1)
    epochs: int = Field(2, ge=1)

    @field_validator("variant")
    @classmethod
    def _known_variant(cls, value: str) -> str:
        if value not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, not {value!r}")
        return value

    max_length: int = Field(1024, ge=16)
    residual_dropout: float | None = None  # top layer's rate; None: 0.3, or 0.2 below 30B parameters
    residual_dropout_on: bool = True
    lora_rank: int = 8
    lora_alpha: int = 16
    # The share of layers, from the top, that get LoRA. Backpropagation stops below the lowest one,
    # so 0.5 trains ~1.5x faster on CPU (the bundled 30-layer model: top 15 layers).
    lora_layer_share: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = 42
    save_every_epoch: bool = True
    # Exactly this many optimizer steps, whatever `epochs` says: fewer (a trial run), or more epochs over a
    # small set (a fixed budget: `limachat ablate` gives every variant the same number of steps).
    max_steps: int | None = Field(None, ge=1)


PRESETS: dict[str, dict] = {
    # LIMA: AdamW b1 0.9, b2 0.95, wd 0.1, no warm-up, lr 1e-5 decaying linearly to 1e-6, batch 32,
    # 15 epochs, max length 2048, residual dropout 0 -> 0.3 (0.2 for smaller models).
    "lima": dict(
        learning_rate=1e-5,
        final_learning_rate=1e-6,
        adam_beta1=0.9,
        adam_beta2=0.95,
        weight_decay=0.1,
        warmup_steps=0,
        batch_size=32,
        epochs=15,
        max_length=2048,
        residual_dropout_on=True,
    ),
    # LIMA's optimizer shape with a LoRA learning rate and a CPU-sized schedule (the demo adapters):
    # three epochs of small batches, so each adapter takes ~50 optimizer steps and its loss falls, with
    # LoRA on the top half of the layers so both fit in 8 minutes on 2 cores.
    # No residual dropout: on the bundled set it lifted SmolLM2's starting loss from 3.4 to 8.7, more
    # damage than a few LoRA epochs repair (LIMA applied it over 15 epochs of full fine-tuning).
    "lora-cpu": dict(
        learning_rate=4e-4,
        final_learning_rate=4e-5,
        adam_beta1=0.9,
        adam_beta2=0.95,
        weight_decay=0.1,
        warmup_steps=0,
        batch_size=4,
        micro_batch_size=1,
        epochs=3,
        max_length=1024,
        residual_dropout_on=False,
        lora_layer_share=0.5,
    ),
}


def make_config(recipe: str | None = None, method: str = "lora", **overrides) -> TrainConfig:
    """The preset (`lima` by default for full fine-tuning, `lora-cpu` for LoRA), then overrides."""
    recipe = recipe or ("lima" if method == "full" else "lora-cpu")
    if recipe not in PRESETS:
        raise ValueError(f"--recipe must be one of {', '.join(PRESETS)}, not {recipe!r}")
    return TrainConfig(
        **{
            **PRESETS[recipe],
            "recipe": recipe,
            "method": method,
            **{k: v for k, v in overrides.items() if v is not None},
        }
    )


def top_dropout(config: TrainConfig, parameters: int) -> float:
    if config.residual_dropout is not None:
        return config.residual_dropout
    return 0.2 if parameters < SMALL_MODEL_PARAMS else 0.3
