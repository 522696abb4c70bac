"""LIMA's residual dropout: dropout on each sub-layer's output before it joins the residual stream,
its rate rising linearly from 0.0 at the bottom layer to `top` at the last (Zhou et al., 2023)."""

from __future__ import annotations


def layer_rates(layers: int, top: float) -> list[float]:
    if layers == 1:
        return [top]
    return [top * i / (layers - 1) for i in range(layers)]


def decoder_layers(model):
    """The decoder layers of a llama-style model, through any PEFT wrapper."""
    for path in ("model.layers", "base_model.model.model.layers", "model.model.layers"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return list(obj)
        except AttributeError:
            continue
    return None


def add_residual_dropout(model, top: float) -> list[float]:
    """Hook the attention output and MLP output projections of every layer; returns the rates.
    Raises ValueError for architectures without llama's module names."""
    import torch.nn.functional as F

    layers = decoder_layers(model)
    if not layers or not all(
        hasattr(layer, "self_attn")
        and hasattr(layer.self_attn, "o_proj")
        and hasattr(layer, "mlp")
        and hasattr(layer.mlp, "down_proj")
        for layer in layers
    ):
        raise ValueError("residual dropout needs a llama-style model (layers with self_attn.o_proj and mlp.down_proj)")
    rates = layer_rates(len(layers), top)
    for layer, p in zip(layers, rates):
        for module in (layer.self_attn.o_proj, layer.mlp.down_proj):
            module._limachat_residual_dropout = p
            module.register_forward_hook(
                lambda mod, args, out, p=p: F.dropout(out, p=p, training=mod.training) if p > 0 else out
            )
    return rates
