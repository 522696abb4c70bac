"""The real vLLM CPU server on the bundled model, started the way a user starts it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from conftest import models

from limachat.serve.client import ChatClient, Completion, ContextTooLong, UnknownModel


def stream(server, model: str, messages, **params):
    client = ChatClient(server.checkpoint(model))

    async def go():
        return [e async for e in client.stream(messages, params)]

    return asyncio.run(go())


def test_serves_base_and_both_adapters(vllm_server):
    assert models(vllm_server.url, vllm_server.headers) == {"base", "zero-shot", "dialogue"}
    out = vllm_server.output()
    assert "vLLM ready in" in out and f"http://127.0.0.1:{vllm_server.port}/v1 serving base, zero-shot, dialogue" in out
    # The start reads as phases with their times (the tiny model is served eagerly: nothing to compile), and
    # vLLM's own lines, its warnings among them, stay in its log file.
    assert vllm_server.last_start() == ["processes", "weights", "engine"]
    assert "starting vLLM,   0 s: starting vLLM's processes" in out and "pid=" not in out
    # One rank: the engine runs the model itself, no worker process beside it (cpu-engine-runs-the-model).
    log = (vllm_server.home / "logs" / f"vllm-{vllm_server.port}.log").read_text(errors="replace")
    assert set(re.findall(r"^\((\w+?)(?:-\d+)? pid=\d+\)", log, re.M)) == {"APIServer", "EngineCore"}
    # ... forked from the API server (cpu-engine-forks): one Python start, so the plugin loaded once, not again
    # in a fresh engine process.
    assert log.count("limachat's vLLM patches applied") == 1
    home = vllm_server.home / "checkpoints"
    assert (
        f"zero-shot: serving the trained adapter in {home / 'zero-shot'}" in out
        and f"dialogue: serving the trained adapter in {home / 'dialogue'}" in out
    )


def test_the_bundled_model_s_start_says_how_long_each_phase_took(real_server):
    """The ready line names the phases and their times (uncompiled: no compile, no load from the cache;
    a compiled start's phases: test_crash.py)."""
    assert real_server.last_start() == ["processes", "weights", "engine"]


def test_a_first_start_serves_at_once_and_compiles_for_the_next_in_the_background(vllm_server):
    """Compiling left to the default and vLLM's cache empty (a new machine): `limachat serve` was ready
    without compiling, and a niced vLLM compiles the same configuration into the cache meanwhile. (The
    next start loading it: test_crash.py's restart of vLLM.)"""
    out = vllm_server.output()
    assert "serving uncompiled at once, and compiling in the background for the next start" in out
    assert "uncompiled for now)" in out.split("vLLM ready in")[1].split("\n")[0]
    vllm_server.wait_compiled()
    cache = Path(vllm_server.env["VLLM_CACHE_ROOT"])
    assert len(list((cache / "limachat-compiled").glob("*.json"))) == 1
    assert list(cache.glob("torch_compile_cache/torch_aot_compile/*")), "vLLM's own compile is in the cache"
    # The compile phase is read off this vLLM's own log (serve/start.py): its time is kept for the next estimate.
    kept = json.loads((vllm_server.home / "logs" / f"vllm-{vllm_server.port}-compile.start.json").read_text())
    assert kept["compile_s"] > 0
    assert models(vllm_server.url, vllm_server.headers) == {"base", "zero-shot", "dialogue"}


def test_without_the_key_the_port_refuses_completions_and_adapter_changes(vllm_server):
    """A plain curl of the model server's port, with no key or a wrong one: no completion on any route
    (vLLM's own /v1 and its SageMaker /invocations), no adapter loaded or unloaded (/v1/*_lora_adapter
    and /adapters). The probes answer. The key lives in the home, readable by its owner only, and shows
    in neither the command line nor the log."""
    root = vllm_server.url.removesuffix("/v1")
    chat = {"model": "dialogue", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    attempts = [
        ("POST", "/v1/chat/completions", chat),
        ("POST", "/v1/completions", {"model": "base", "prompt": "Hi", "max_tokens": 4}),
        ("POST", "/invocations", chat),
        ("GET", "/v1/models", None),
        ("POST", "/v1/unload_lora_adapter", {"lora_name": "dialogue"}),
        ("POST", "/v1/load_lora_adapter", {"lora_name": "mine", "lora_path": "/tmp"}),
        ("POST", "/adapters", {"name": "mine", "src": "/tmp"}),
        ("DELETE", "/adapters/dialogue", None),
        ("POST", "/tokenize", {"model": "base", "prompt": "Hi"}),
    ]
    for headers in ({}, {"Authorization": "Bearer not-the-key"}):
        for method, path, body in attempts:
            r = httpx.request(method, root + path, json=body, headers=headers, timeout=30)
            assert r.status_code == 401, (method, path, headers, r.status_code, r.text[:200])
    for path in ("/health", "/ping", "/version"):
        assert httpx.get(root + path, timeout=30).status_code == 200, path
    assert models(vllm_server.url, vllm_server.headers) == {"base", "zero-shot", "dialogue"}, "nothing was unloaded"
    r = httpx.post(vllm_server.url + "/chat/completions", json=chat, headers=vllm_server.headers, timeout=120)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]

    key_file = vllm_server.home / "server.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and len(vllm_server.key) >= 32
    vllm_server.track()
    for p in vllm_server.leftovers():  # every process it runs now (a background compile's are gone)
        assert vllm_server.key not in " ".join(p.cmdline()), p.cmdline()
    assert vllm_server.key not in (vllm_server.home / "logs" / f"vllm-{vllm_server.port}.log").read_text()


def test_adapters_load_at_run_time_only_from_the_homes_checkpoints(vllm_server):
    """With the key, an adapter outside the home's checkpoints (and server.adapter_dirs) is refused in one
    line, also through a symlink that points out; nothing else changes."""
    untrained = vllm_server.untrained
    with tempfile.TemporaryDirectory(prefix="elsewhere-") as d:  # not under the session's temporary folder
        outside = Path(d) / "stolen"
        shutil.copytree(untrained, outside)
        link = vllm_server.home / "checkpoints" / "link-out"
        link.symlink_to(outside)
        try:
            climbing = link.parent / os.path.relpath(outside, link.parent)  # checkpoints/../../..: out of the home
            for path in (outside, link, climbing):
                r = httpx.post(
                    vllm_server.url + "/load_lora_adapter",
                    json={"lora_name": "mine", "lora_path": str(path)},
                    headers=vllm_server.headers,
                    timeout=60,
                )
                assert r.status_code == 400 and "adapters are loaded only from" in r.text, (path, r.text)
        finally:
            link.unlink()
    assert models(vllm_server.url, vllm_server.headers) == {"base", "zero-shot", "dialogue"}


@pytest.mark.parametrize("model", ["zero-shot", "dialogue", "base"])
def test_streams_a_reply_with_usage_and_timing(vllm_server, model):
    events = stream(
        vllm_server,
        model,
        [{"role": "user", "content": "Complete this sentence: The capital of France is"}],
        temperature=0.0,
        max_tokens=24,
    )
    done = events[-1]
    pieces = events[:-1]
    assert isinstance(done, Completion) and all(isinstance(p, str) for p in pieces)
    assert len(pieces) >= 2, "the reply should arrive in several pieces, not at once"
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Complete this sentence: The capital of France is"}],
    }
    whole = httpx.post(
        vllm_server.url + "/chat/completions",
        headers=vllm_server.headers,
        json={**body, "temperature": 0.0, "max_tokens": 24},
        timeout=120,
    ).json()["choices"][0]
    assert done.text == "".join(pieces) == whole["message"]["content"]  # the pieces make up the greedy reply
    assert done.finish_reason == whole["finish_reason"] and done.finish_reason in ("stop", "length")
    assert done.usage.prompt_tokens > 5 and 1 <= done.usage.completion_tokens <= 24
    assert 0 < done.ttft < done.latency < 120


def test_each_checkpoint_answers_with_its_own_weights(vllm_server):
    """`base` is the base model with no adapter (vLLM 0.32's CPU kernels used to hand it the last
    adapter's weights), and the two adapters differ from it and from each other."""
    import httpx
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    messages = [{"role": "user", "content": "Can you explain what photosynthesis is?"}]

    def first_logprobs(model: str) -> dict[int, float]:
        body = {
            "model": model,
            "messages": messages,
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": 3,
            "return_tokens_as_token_ids": True,  # a token's text can be many tokens' ("Ġ Zone" and " Zone")
        }
        top = httpx.post(
            vllm_server.url + "/chat/completions", headers=vllm_server.headers, json=body, timeout=120
        ).json()["choices"][0]["logprobs"]
        return {int(t["token"].removeprefix("token_id:")): t["logprob"] for t in top["content"][0]["top_logprobs"]}

    served = {m: first_logprobs(m) for m in ("base", "zero-shot", "dialogue")}
    folder = vllm_server.base
    tok, model = (
        AutoTokenizer.from_pretrained(folder),
        AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32),
    )
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)[
        "input_ids"
    ]
    with torch.no_grad():
        reference = torch.log_softmax(model(ids).logits[0, -1], -1)
    for token, logprob in served["base"].items():
        assert logprob == pytest.approx(float(reference[token]), abs=2e-3), (token, served)
    # the three top-3 distributions all differ (two adapters can share a top token's rounded logprob)
    assert len({tuple(sorted((t, round(lp, 4)) for t, lp in top.items())) for top in served.values()}) == 3, served


def test_unknown_model_from_real_server(vllm_server):
    with pytest.raises(UnknownModel, match="does not serve model 'lima-7b'"):
        stream(vllm_server, "lima-7b", [{"role": "user", "content": "hi"}])


def test_prompt_longer_than_context_from_real_server(vllm_server):
    long_prompt = "tell me more " * 1200  # ~3,600 tokens against a 2,048-token window
    with pytest.raises(ContextTooLong):
        stream(vllm_server, "dialogue", [{"role": "user", "content": long_prompt}], max_tokens=16)


@pytest.mark.stops_server
def test_ctrl_c_stops_every_process_it_started(vllm_server):
    vllm_server.track()
    assert len(vllm_server.started) >= 2, "vLLM's API server and its engine process"
    code = vllm_server.interrupt()
    assert code == 0
    time.sleep(1)
    assert vllm_server.leftovers() == []
    assert vllm_server.output().rstrip().endswith("stopped")


def test_serves_started_at_once_in_one_home_share_one_whole_key(tmp_path, monkeypatch):
    """Eight `limachat serve` started at once in an empty home (on several ports) each ask for its key. Making
    a key is slowed down here, so that every other asks while the first is still writing it: each gets the
    same whole key, none an empty file, owner-only, and nothing else is left in the home."""
    import secrets
    from concurrent.futures import ThreadPoolExecutor

    from limachat.layout import Home

    make = secrets.token_urlsafe
    monkeypatch.setattr(secrets, "token_urlsafe", lambda n: (time.sleep(0.2), make(n))[1])
    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: Home(tmp_path).api_key(create=True), range(8)))
    assert len(set(keys)) == 1 and keys[0] is not None and len(keys[0]) >= 32, keys
    assert [p.name for p in tmp_path.iterdir()] == ["server.key"]
    assert stat.S_IMODE((tmp_path / "server.key").stat().st_mode) == 0o600


def test_a_home_on_a_filesystem_without_hard_links_still_gets_its_key(tmp_path, monkeypatch):
    """FAT and some network shares refuse hard links (EPERM): the key is then moved into place. A stand-in for
    such a filesystem, which this machine's disk is not."""
    import errno

    from limachat.layout import Home

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    key = Home(tmp_path).api_key(create=True)
    assert key is not None and len(key) >= 32 and Home(tmp_path).api_key() == key
    assert [p.name for p in tmp_path.iterdir()] == ["server.key"]
    assert stat.S_IMODE((tmp_path / "server.key").stat().st_mode) == 0o600


def test_the_image_and_the_compose_file_publish_only_the_apps_port():
    """On a GPU host the model server's port is not published unless the user asks: the Dockerfile
    exposes the app alone and keeps vLLM on the container's loopback; in compose.yaml only the app has
    `ports:`, vLLM is on the compose network, and both share the home that holds the key."""
    import yaml
    from conftest import REPO

    docker = (REPO / "Dockerfile").read_text()
    assert re.findall(r"^EXPOSE (.*)$", docker, re.M) == ["7860"]
    assert "LIMACHAT_SERVER__HOST" not in re.sub(r"^#.*$", "", docker, flags=re.M)
    services = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]
    assert {name for name, s in services.items() if s.get("ports")} == {"app"}
    assert services["app"]["ports"] == ["7860:7860"]
    assert services["app"]["environment"]["LIMACHAT_SERVER__HOST"] == "vllm"
    assert all("limachat-data:/data" in s["volumes"] for s in services.values()), "one home: one key"
