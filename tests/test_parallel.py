"""vLLM across ranks, configured rather than coded: `limachat serve` with `server.data_parallel = 2`,
`server.pipeline_parallel = 2` and `server.tensor_parallel = 2` (two ranks, one core each, on this 2-core
machine) serves what one rank serves. Each checkpoint's greedy tokens and top log-probabilities are
checked against transformers and PEFT on the same weights, as tests/test_lora_parity.py checks the
one-rank server: `base`, both demo adapters, an adapter on every layer (so that under pipeline parallelism
both stages apply LoRA; the demo adapters touch only the top half of the layers, which the second stage
holds), and one loaded at run time, as a CITING round loads its checkpoint. On the tiny model (two
layers, two heads: one stage or one head per rank), where what is checked is that the ranks compute
what one process computes.

Both servers run eager: compiling is not what these tests check, and on a cold cache each new layout
compiles for minutes (a setting lowered that is not the one tested)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil

import httpx
import pytest
from conftest import RunningServer, free_port, models
from test_lora_parity import ABS, MESSAGES, prompt_ids, references, served, teacher_forced

from limachat.serve.server import load_adapter

CHECKPOINTS = ("base", "zero-shot", "dialogue", "wide", "late")  # `late`: loaded once the server runs


def synthetic_adapter(base_folder, folder, seed: int) -> None:
    """A LoRA adapter on every linear module of every layer with seeded random weights (PEFT starts B at
    zero, which would answer like the base): what a rank that dropped it would visibly get wrong."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets, lora_dropout=0.0))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    peft.save_pretrained(folder)


@pytest.fixture(scope="module")
def parallel_home(trained_home, tiny_base, tmp_path_factory):
    """A data home with the session's base and demo adapters, plus `wide`; `late` waits outside checkpoints."""
    home = tmp_path_factory.mktemp("parallel")
    (home / "base").symlink_to(trained_home / "base")
    for name in ("zero-shot", "dialogue"):
        shutil.copytree(trained_home / "checkpoints" / name, home / "checkpoints" / name)
    synthetic_adapter(tiny_base, home / "checkpoints" / "wide", seed=1)
    synthetic_adapter(tiny_base, home / "late", seed=2)
    return home


@pytest.fixture(scope="module")
def reference(parallel_home, tiny_base):
    where = {name: parallel_home / "checkpoints" / name for name in CHECKPOINTS[1:]}
    return references(tiny_base, {**where, "late": parallel_home / "late"})


def requests_per_engine(server) -> dict[str, float]:
    text = httpx.get(server.url.removesuffix("/v1") + "/metrics", timeout=30).text
    counts: dict[str, float] = {}
    for m in re.finditer(r'^vllm:request_success_total\{[^}]*engine="(\d+)"[^}]*\} ([\d.]+)$', text, re.M):
        counts[m[1]] = counts.get(m[1], 0.0) + float(m[2])
    return counts


def greedy(server, jobs):
    async def go():
        async with httpx.AsyncClient(timeout=600, headers=server.headers) as http:
            return await asyncio.gather(*(served(http, server.url, m, ids) for m, ids in jobs))

    return asyncio.run(go())


@pytest.mark.parametrize("setting", ["data_parallel", "pipeline_parallel", "tensor_parallel"])
def test_two_ranks_serve_what_one_rank_serves(parallel_home, tiny_base, reference, setting):
    tok, refs = reference
    env = {
        f"LIMACHAT_SERVER__{setting.upper()}": "2",
        "LIMACHAT_SERVER__ENFORCE_EAGER": "true",
        "LIMACHAT_SERVER__BASE": str(tiny_base),
        "LIMACHAT_SERVER__ADAPTER_DIRS": json.dumps([str(parallel_home)]),
    }
    server = RunningServer(parallel_home, free_port(), env=env)
    try:
        server.wait_ready()
        log = (parallel_home / "logs" / f"vllm-{server.port}.log").read_text()
        assert "VLLM_CPU_OMP_THREADS_BIND='0|1'" in log, "each rank bound to a core of its own"
        assert re.search(r"core ids=\[0\]", log) and re.search(r"core ids=\[1\]", log)
        applied = [line for line in log.splitlines() if "limachat's vLLM patches applied" in line]
        # Loaded once, in the API server: the engines and workers are forked from it (cpu-engine-forks), patched
        # as it is; a rank without them would fail the parity below (`base` answered with an adapter's weights).
        assert len(applied) == 1, "vLLM's processes are forked from the API server, not started afresh"

        load_adapter(server.url, "late", parallel_home / "late", server.key)
        assert models(server.url, server.headers) == set(CHECKPOINTS)
        jobs = [(name, prompt_ids(tok, messages)) for messages in MESSAGES for name in CHECKPOINTS]
        results = greedy(server, jobs)
        before = requests_per_engine(server)
        late = [("late", prompt_ids(tok, messages)) for messages in MESSAGES] * 3  # only `late`, spread out
        results += greedy(server, late)
        jobs += late
        for (name, ids), (tokens, tops) in zip(jobs, results):
            reference_lp = teacher_forced(refs[name], ids + tokens, len(ids) - 1)
            expected = [int(reference_lp[i].argmax()) for i in range(len(tokens))]
            assert tokens == expected, (setting, name, tok.decode(tokens), tok.decode(expected))
            for i, top in enumerate(tops):
                for token, logprob in top.items():
                    assert logprob == pytest.approx(float(reference_lp[i, token]), abs=ABS), (setting, name, i)
        answers = {
            name: {(tuple(ids), tuple(t)) for (n, ids), (t, _) in zip(jobs, results) if n == name}
            for name in CHECKPOINTS
        }
        for name in ("wide", "late"):  # else the parity above would not show a rank that dropped them
            assert answers[name] - answers["base"], f"{name} answers every prompt as the base does"
        if setting == "data_parallel":  # each engine answered some of the `late` requests, each correctly
            after = requests_per_engine(server)
            assert set(after) == {"0", "1"} and all(after[e] > before.get(e, 0.0) for e in after), (before, after)
    finally:
        if server.proc.poll() is None:
            server.interrupt()
        for p in server.leftovers():
            p.kill()
