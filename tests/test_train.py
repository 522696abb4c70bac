"""Training: the variant split, loss masks, residual dropout, the EOT path, and a real short run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from limachat.train.data import IGNORE, Example, read_file, split, tokenize
from limachat.train.dropout import add_residual_dropout, layer_rates
from limachat.train.recipe import make_config
from limachat.train.trainer import EOT, ensure_chat_template


def test_variant_split_on_a_lima_shaped_file(tmp_path):
    path = tmp_path / "train.jsonl"
    with path.open("w") as f:
        for i in range(1000):
            f.write(json.dumps({"conversations": [f"question {i}", f"answer {i}"], "source": "stackexchange"}) + "\n")
        for i in range(30):
            f.write(json.dumps({"conversations": [f"q{i}", "a", "follow-up", "b"], "source": "multi_turn"}) + "\n")
    s = split(read_file(path))
    assert len(s.variant("zero-shot")) == 1000
    assert len(s.variant("dialogue")) == 1030
    assert all(not ex.multi_turn for ex in s.variant("zero-shot"))


def test_a_bad_training_line_names_file_and_line(tmp_path):
    from limachat.dialogues.formats import FormatError

    path = tmp_path / "bad.jsonl"
    path.write_text('{"conversations": ["q", "a"]}\n{"conversations": "nope"}\n')
    with pytest.raises(FormatError, match=rf"^{path}:2: "):
        read_file(path)


def test_loss_mask_covers_exactly_the_assistant_turns(tiny_base):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    ex = Example(
        (("user", "Name a colour."), ("assistant", "Blue."), ("user", "Another?"), ("assistant", "Green, like grass.")),
        True,
        "test",
    )
    row = tokenize(ex, tok, 2048)
    ids, labels = row["input_ids"], row["labels"]
    assert len(ids) == len(labels) and not row["trimmed"]
    spans, current = [], []
    for token, label in zip(ids, labels):
        if label == IGNORE:
            if current:
                spans.append(current)
                current = []
        else:
            assert label == token
            current.append(token)
    if current:
        spans.append(current)
    end = "<|im_end|>"
    assert [tok.decode(s).strip() for s in spans] == [f"Blue.{end}", f"Green, like grass.{end}"]
    unlabeled = tok.decode([t for t, lab in zip(ids, labels) if lab == IGNORE])
    assert "Name a colour." in unlabeled and "Another?" in unlabeled and "Blue." not in unlabeled


def test_trimming_is_counted(tiny_base):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    row = tokenize(Example((("user", "hi " * 50), ("assistant", "yes " * 50)), False, "t"), tok, 64)
    assert row["trimmed"] and len(row["input_ids"]) == 64 and row["tokens"] > 64


def tiny_llama(layers: int = 4):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=512,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
        )
    )


def test_residual_dropout_rises_linearly_per_layer():
    import torch

    assert layer_rates(4, 0.3) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    model = tiny_llama(layers=5)
    rates = add_residual_dropout(model, 0.2)
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    got = [
        (layer.self_attn.o_proj._limachat_residual_dropout, layer.mlp.down_proj._limachat_residual_dropout)
        for layer in model.model.layers
    ]
    assert got == [(r, r) for r in rates]
    top = model.model.layers[-1].mlp.down_proj
    x = torch.randn(2, 8, 64)
    model.eval()
    assert torch.equal(top(x), top(x))  # no dropout at inference
    model.train()
    assert (top(x) == 0).float().mean() > 0.05  # ~20% of the top layer's output dropped in training
    bottom = model.model.layers[0].mlp.down_proj
    assert (bottom(x) == 0).float().mean() == 0  # rate 0 at the bottom


def test_small_models_top_out_at_0_2_and_large_at_0_3():
    from limachat.train.recipe import top_dropout

    cfg = make_config("lima", method="full")
    assert (top_dropout(cfg, 135e6), top_dropout(cfg, 65e9)) == (0.2, 0.3)
    assert (cfg.learning_rate, cfg.final_learning_rate, cfg.batch_size, cfg.epochs, cfg.max_length) == (
        1e-5,
        1e-6,
        32,
        15,
        2048,
    )
    assert (cfg.adam_beta1, cfg.adam_beta2, cfg.weight_decay, cfg.warmup_steps) == (0.9, 0.95, 0.1, 0)


def test_end_of_turn_token_for_a_base_without_chat_template(tiny_base):
    """A tiny llama built here, with SmolLM2's tokenizer stripped of its chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    tok.chat_template = None
    assert ensure_chat_template(tok)
    eot = tok.convert_tokens_to_ids(EOT)
    row = tokenize(
        Example((("user", "q"), ("assistant", "a"), ("user", "q2"), ("assistant", "b")), True, "t"), tok, 256
    )
    labelled = [t for t, lab in zip(row["input_ids"], row["labels"]) if lab != IGNORE]
    assert (
        labelled.count(eot) == 2 and row["input_ids"].count(eot) == 4
    )  # every turn ends with it; the loss sees the assistant's
    assert tok.decode(labelled) == f" a{EOT}\n b{EOT}\n"
    model = tiny_llama()
    model.resize_token_embeddings(len(tok))
    assert model.get_input_embeddings().weight.shape[0] == len(tok) > eot


def test_demo_training_lowers_the_loss_and_dialogue_wins_on_held_out_chains(real_trained_home):
    """The adapters `limachat demo` serves (the shipped ones: trained with its recipe on the bundled model):
    the loss fell epoch over epoch, every adapter weight moved, and on two held-out multi-turn chains
    (replies from turn 2 on) the dialogue checkpoint, which saw multi-turn chains, beats zero-shot, which
    did not."""
    trained_home = real_trained_home
    from safetensors import safe_open

    from limachat.train.recipe import make_config

    recipe = make_config()
    records = {}
    for variant, examples in (("zero-shot", 62), ("dialogue", 68)):
        out = trained_home / "checkpoints" / variant
        record = records[variant] = json.loads((out / "training.json").read_text())
        assert record["examples"] == examples and record["chains"] == (6 if variant == "dialogue" else 0)
        per_epoch = record["steps"] // recipe.epochs
        losses = [loss for _, loss in record["losses"]]
        first, last = losses[:per_epoch], losses[-per_epoch:]
        assert sum(last) / len(last) < sum(first) / len(first) - 0.1, losses
        assert record["served_epoch"] == recipe.epochs and record["shipped"]
        with safe_open(out / "adapter_model.safetensors", "pt") as f:
            b = [f.get_tensor(k) for k in f.keys() if "lora_B" in k]
        assert len(b) == 15 * 7 and all(t.abs().max() > 0 for t in b)  # top half of 30 layers; B starts at zero
        held = record["heldout"]
        assert held["chains"] == 2 and held["tokens"] > 500 and held["loss"] < held["base_loss"]
    assert records["dialogue"]["heldout"]["loss"] < records["zero-shot"]["heldout"]["loss"], {
        v: r["heldout"] for v, r in records.items()
    }


def test_unchanged_data_is_not_retrained_however_the_base_is_spelled(trained_home, tiny_base, monkeypatch):
    from tiny import training_data

    from limachat.settings import Settings
    from limachat.train.pipeline import run
    from limachat.train.recipe import make_config

    last = make_config().epochs
    data = training_data()  # what trained_home's adapters were trained on
    out = trained_home / "checkpoints" / "zero-shot"
    said = []
    monkeypatch.chdir(trained_home)  # `make demo` spells the base absolute, `limachat demo` relative: the same base
    relative = os.path.relpath(tiny_base, trained_home)
    for spelling in (relative, str(tiny_base), f"./{relative}/../{tiny_base.name}"):
        run(Settings(home=Path(".")), ["zero-shot"], data, spelling, {}, epoch=1, progress=said.append)
        assert said[-1] == f"zero-shot: up to date in {Path('.') / 'checkpoints' / 'zero-shot'}; now serving epoch 1"
    assert (out / "adapter_model.safetensors").read_bytes() == (
        out / "epochs" / "epoch-1" / "adapter_model.safetensors"
    ).read_bytes()
    run(
        Settings(home=trained_home),
        ["zero-shot"],
        data,
        str(tiny_base),
        {},
        epoch=last,
        progress=said.append,
    )
    assert json.loads((out / "training.json").read_text())["served_epoch"] == last


def test_fingerprint_follows_content_not_paths(real_home, tmp_path):
    import shutil

    from limachat.train.data import bundled_examples
    from limachat.train.pipeline import fingerprint
    from limachat.train.recipe import make_config

    config, examples = make_config(), bundled_examples()
    base = real_home / "base" / "SmolLM2-135M-Instruct" / "model"
    stamp = fingerprint(config, examples, str(base))
    assert fingerprint(config, examples[:-1], str(base)) != stamp  # other data
    assert fingerprint(make_config(epochs=5), examples, str(base)) != stamp  # other settings
    copy = tmp_path / "elsewhere"
    shutil.copytree(base, copy)
    assert fingerprint(config, examples, str(copy)) == stamp  # the same base moved: its recorded hash is the same
    record = json.loads((copy / "limachat-base.json").read_text())
    (copy / "limachat-base.json").write_text(json.dumps({**record, "source_sha256": "0" * 64}))
    assert fingerprint(config, examples, str(copy)) != stamp  # another base


def test_a_named_checkpoint_needs_one_variant_and_a_plain_name(clean_env):
    from click.testing import CliRunner

    from limachat.cli import main

    for args, bad in (
        (["--name", "dialogue-r2"], "'dialogue-r2'"),
        (["--variant", "dialogue", "--name", "../up"], "'../up'"),
    ):
        result = CliRunner().invoke(main, ["--home", str(clean_env), "train", *args, "--dry-run"])
        assert result.exit_code != 0 and f"--name {bad}: give one --variant" in result.output


def test_training_leaves_the_vllm_log_level_alone():
    """TRL sets VLLM_LOGGING_LEVEL=ERROR when imported; `limachat demo` trains, then starts vLLM from the
    same process, whose log must keep its INFO lines (the plugin's report among them)."""
    import subprocess
    import sys

    code = (
        "import os; from limachat.train.trainer import sft_args, trainer_class; trainer_class(); "
        "import trl; print(os.environ.get('VLLM_LOGGING_LEVEL'))"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "VLLM_LOGGING_LEVEL"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "None"


def test_the_shipped_demo_adapters_are_what_the_recipe_trains_today():
    """train/adapters/ holds what `limachat train` makes of the bundled data with the default recipe on the
    bundled base: a change to any of them without `make adapters` fails here."""
    from limachat.layout import VARIANTS, training_record
    from limachat.serve.base import bundled_identity
    from limachat.train.data import bundled_examples
    from limachat.train.pipeline import fingerprint_of
    from limachat.train.shipped import shipped

    data, identity = split(bundled_examples()), bundled_identity()
    for variant in VARIANTS:
        record = training_record(shipped(variant))
        expected = fingerprint_of(make_config(variant=variant), data.variant(variant), identity)
        assert record["fingerprint"] == expected, f"{variant}: the recipe, data or base changed: run `make adapters`"
        assert (
            record["base_identity"] == identity and "base_model" not in record
        )  # no path of the machine that built it


def test_a_shipped_adapter_is_installed_only_for_its_own_fingerprint(tmp_path):
    from limachat.layout import training_record
    from limachat.train.shipped import install, shipped
    from limachat.train.trainer import select_epoch

    stamp = training_record(shipped("dialogue"))["fingerprint"]
    out = tmp_path / "checkpoints" / "dialogue"
    assert not install("dialogue", "0" * 16, out, "/bases/smol") and not out.exists()
    assert install("dialogue", stamp, out, "/bases/smol")
    record = training_record(out)
    assert record["shipped"] and record["base_model"] == "/bases/smol" and record["fingerprint"] == stamp
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "/bases/smol"
    assert (out / "adapter_model.safetensors").read_bytes() == (
        shipped("dialogue") / "adapter_model.safetensors"
    ).read_bytes()
    with pytest.raises(ValueError, match=r"^--epoch 2: .* keeps its last epoch only; add --force to train it here"):
        select_epoch(out, 2)
