"""Which adapter `limachat serve` serves under each checkpoint name (no server started here)."""

import json

import pytest

from limachat.serve.server import ServerError, find_adapters


def adapter(folder, base_model=None):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    if base_model:
        (folder / "training.json").write_text(json.dumps({"base_model": base_model}))


def test_trained_adapters_for_this_base_are_served(tmp_path):
    adapter(tmp_path / "checkpoints" / "dialogue", "/base/a")
    untrained = tmp_path / "untrained"
    zs, dl = find_adapters(tmp_path, untrained, "/base/a")
    assert (zs.path, zs.trained) == (
        untrained,
        False,
    ) and f"no {tmp_path / 'checkpoints' / 'zero-shot'}" in zs.describe()
    assert (dl.path, dl.trained) == (tmp_path / "checkpoints" / "dialogue", True)


def test_an_adapter_trained_on_another_base_is_not_served(tmp_path):
    adapter(tmp_path / "checkpoints" / "zero-shot", "/base/other")
    zs, _ = find_adapters(tmp_path, tmp_path / "untrained", "/base/a")
    assert not zs.trained and "was trained on /base/other" in zs.describe()


def test_a_full_fine_tune_says_how_to_serve_it(tmp_path):
    full = tmp_path / "checkpoints" / "dialogue"
    full.mkdir(parents=True)
    (full / "config.json").write_text("{}")
    with pytest.raises(ServerError, match=r"full fine-tuned model.*limachat serve --base .*dialogue --port 8001"):
        find_adapters(tmp_path, tmp_path / "untrained", "/base/a")


def test_other_adapters_trained_here_are_served_too(tmp_path):
    """`limachat train --name` and the app's Collect tab write beside the two variants."""
    adapter(tmp_path / "checkpoints" / "dialogue-r2", "/base/a")
    adapter(tmp_path / "checkpoints" / "elsewhere", "/base/other")
    (tmp_path / "checkpoints" / "half-written").mkdir()
    names = [a.name for a in find_adapters(tmp_path, tmp_path / "untrained", "/base/a")]
    assert names == ["zero-shot", "dialogue", "dialogue-r2"]


def _weights(folder, modules):
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    tensors = {}
    for m in modules:
        tensors[f"base_model.model.{m}.lora_A.weight"] = np.zeros((8, 4), dtype=np.float32)
        tensors[f"base_model.model.{m}.lora_B.weight"] = np.zeros((4, 8), dtype=np.float32)
    save_file(tensors, str(folder / "adapter_model.safetensors"))


def test_vllm_wraps_only_the_modules_the_adapters_touch(tmp_path):
    """--lora-target-modules: each adapter's own modules, as vLLM names them (q/k/v packed into qkv_proj,
    gate/up into gate_up_proj), the union over the adapters."""
    from limachat.serve.server import Adapter, ServerConfig, lora_targets

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    _weights(
        tmp_path / "a",
        ["model.layers.2.self_attn.q_proj", "model.layers.2.self_attn.v_proj", "model.layers.2.mlp.down_proj"],
    )
    _weights(tmp_path / "b", ["model.layers.3.mlp.up_proj", "model.layers.3.mlp.gate_proj"])
    adapters = [Adapter("a", tmp_path / "a", True), Adapter("b", tmp_path / "b", True)]
    targets = lora_targets(str(base), adapters)
    assert targets == [
        "model.layers.2.mlp.down_proj",
        "model.layers.2.self_attn.qkv_proj",
        "model.layers.3.mlp.gate_up_proj",
    ]
    config = ServerConfig(str(base), adapters, "127.0.0.1", 8000, False, None, None, 2048, 8, 4, [], targets)
    cmd = config.command()
    assert cmd[cmd.index("--lora-target-modules") + 1 :][:3] == targets
    assert "--enforce-eager" not in cmd  # compiled by default, on CPU too

    # a base whose packing limachat does not know: vLLM wraps every module, as without the option
    (base / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    assert lora_targets(str(base), adapters) is None
