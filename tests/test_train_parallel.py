"""Training across processes: `limachat train --processes 2` trains data-parallel (torch.distributed,
gloo on this CPU) what one process trains, at the same effective batch and seed, and rank 0's adapter
serves. The demo recipe on the tiny model, stopped after 3 optimizer steps (how many steps is not what this
checks)."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import numpy as np
import pytest

from limachat.serve.server import load_adapter

STEPS = 3
LOSS_ABS = 1e-3  # per logged step: the processes sum their gradients in another order than one process does
WEIGHT_ABS = 1e-4  # on the adapter's weights (LoRA B reaches ~1e-3 after 3 steps)


def train(home, base, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "limachat.cli", "--home", str(home), "train", "--variant", "dialogue", "--base", base]
    return subprocess.run([*cmd, "--max-steps", str(STEPS), *args], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def two_runs(model_home, tiny_base, tmp_path_factory):
    runs = {}
    for processes in (1, 2):
        home = tmp_path_factory.mktemp(f"train-{processes}p")
        (home / "base").symlink_to(model_home / "base")
        done = train(home, str(tiny_base), *(["--processes", "2"] if processes == 2 else []))
        assert done.returncode == 0, done.stderr[-3000:]
        runs[processes] = (home / "checkpoints" / "dialogue", done.stderr)
    return runs


def test_two_processes_train_what_one_process_trains(two_runs):
    from safetensors.numpy import load_file

    (one, one_log), (two, two_log) = two_runs[1], two_runs[2]
    assert "effective batch 4 = 1 per device × 1 process × 4 accumulation steps" in one_log
    assert "effective batch 4 = 1 per device × 2 processes × 2 accumulation steps" in two_log
    assert two_log.count("held-out loss") == 1, "rank 0 alone reports and saves"
    records = {n: json.loads((folder / "training.json").read_text()) for n, (folder, _) in two_runs.items()}
    assert (records[1]["processes"], records[1]["accumulation_steps"]) == (1, 4)
    assert (records[2]["processes"], records[2]["accumulation_steps"]) == (2, 2)
    losses = {n: r["losses"] for n, r in records.items()}
    assert [s for s, _ in losses[1]] == [s for s, _ in losses[2]] == list(range(1, STEPS + 1))
    for (_, a), (_, b) in zip(losses[1], losses[2]):
        assert b == pytest.approx(a, abs=LOSS_ABS), losses
    a, b = load_file(str(one / "adapter_model.safetensors")), load_file(str(two / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert np.allclose(a[key], b[key], atol=WEIGHT_ABS, rtol=0), (key, float(np.abs(a[key] - b[key]).max()))
    assert any(np.abs(a[k]).max() > 5 * WEIGHT_ABS for k in a if "lora_B" in k), "the steps moved B off zero"


def test_the_adapter_rank_0_saved_serves(two_runs, vllm_server):
    folder, _ = two_runs[2]
    chat = {"model": "dialogue-2p", "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 16}
    try:
        load_adapter(vllm_server.url, "dialogue-2p", folder, vllm_server.key)
        r = httpx.post(vllm_server.url + "/chat/completions", json=chat, headers=vllm_server.headers, timeout=120)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].strip(), r.text
    finally:
        body = {"lora_name": "dialogue-2p"}
        httpx.post(vllm_server.url + "/unload_lora_adapter", json=body, headers=vllm_server.headers, timeout=60)


def test_a_batch_the_processes_cannot_share_is_refused_in_one_line(model_home, tiny_base, tmp_path):
    (tmp_path / "base").symlink_to(model_home / "base")
    done = train(
        tmp_path, str(tiny_base), "--processes", "3"
    )  # the demo recipe's batch of 4 is not 1 × 3 × a whole number
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "Error: batch size 4 is not 1 per device × 3 processes × a whole number of accumulation steps: change "
        "--batch-size, --micro-batch-size or --processes"
    )
    assert not (tmp_path / "checkpoints").exists()


def test_the_accelerate_configs_for_gpus_load_in_accelerate(tmp_path):
    """FSDP and DeepSpeed ZeRO-3 for a 7B-65B base on 8 GPUs, checked by accelerate's own loader (no GPU
    here to run them on)."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    from limachat.train.configs import CONFIGS

    assert set(CONFIGS) == {"fsdp", "deepspeed-zero3"}
    fsdp, zero3 = load_config_from_file(str(CONFIGS["fsdp"])), load_config_from_file(str(CONFIGS["deepspeed-zero3"]))
    for config in (fsdp, zero3):
        assert (config.num_processes, config.mixed_precision, config.use_cpu) == (8, "bf16", False)
    assert fsdp.distributed_type == DistributedType.FSDP
    assert fsdp.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    assert zero3.distributed_type == DistributedType.DEEPSPEED and zero3.deepspeed_config["zero_stage"] == 3
    broken = tmp_path / "broken.yaml"
    broken.write_text(CONFIGS["fsdp"].read_text().replace("distributed_type: FSDP", "distributed_type: FSPD"))
    with pytest.raises(ValueError):  # the loader does check what it loads
        load_config_from_file(str(broken))
