"""The bundled base model: converted once, left alone when up to date, redone when it changed."""

import json

from limachat.serve.base import MANIFEST, bundled_gguf, check_converted, prepare_base


def test_conversion_is_complete_and_idempotent(real_home):
    model_dir = real_home / "base" / "SmolLM2-135M-Instruct" / "model"
    files = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", MANIFEST} <= files
    record = json.loads((model_dir / MANIFEST).read_text())
    assert record["parameters"] == 134_515_008  # SmolLM2-135M, tied embeddings
    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 30
    before = {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()}

    messages = []
    base = prepare_base(real_home, None, progress=messages.append)
    assert messages == [f"base model up to date: {model_dir}"]
    assert {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()} == before
    assert base.model == str(model_dir)
    adapter = json.loads((base.adapter / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and set(adapter["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }


def test_a_changed_or_partial_result_is_detected(real_home, tmp_path):
    model_dir = real_home / "base" / "SmolLM2-135M-Instruct" / "model"
    assert check_converted(model_dir, bundled_gguf()) is None
    copy = tmp_path / "model"
    copy.mkdir()
    for p in model_dir.iterdir():
        (copy / p.name).symlink_to(p)
    (copy / "config.json").unlink()
    (copy / "config.json").write_text("{}")
    assert check_converted(copy, bundled_gguf()) == "converted files are missing or changed"
    (copy / MANIFEST).unlink()
    assert check_converted(copy, bundled_gguf()) == "not converted yet"


def test_user_base_must_be_a_model_folder(tmp_path):
    import pytest

    from limachat.serve.base import BaseModelError

    with pytest.raises(BaseModelError, match=r"not a Hugging Face model folder \(no config.json\)"):
        prepare_base(tmp_path / "home", str(tmp_path), progress=lambda m: None)


def test_untrained_adapter_for_a_local_base(real_home, tmp_path):
    """`--base FOLDER` serves the folder as is and makes an adapter sized from its config."""
    from safetensors import safe_open

    model_dir = real_home / "base" / "SmolLM2-135M-Instruct" / "model"
    base = prepare_base(tmp_path, str(model_dir), progress=lambda m: None)
    assert base.model == str(model_dir) and base.name == "model"
    with safe_open(base.adapter / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
        assert len(keys) == 30 * 7 * 2
        a = f.get_tensor(next(k for k in keys if "layers.0.self_attn.q_proj.lora_A" in k))
        b = f.get_tensor(next(k for k in keys if "layers.0.self_attn.q_proj.lora_B" in k))
    assert tuple(a.shape) == (8, 576) and a.abs().max() > 0 and b.abs().max() == 0
