"""Crashes: nothing lost, nothing left running. The app killed mid-stream, vLLM killed mid-stream,
and `limachat serve` itself killed (SIGKILL) with its vLLM server running."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import httpx
import pytest
from conftest import RunningServer, free_port
from test_app_browser import browser_page, query, running_app, wait_for

from limachat import procs
from limachat.demo import chat
from limachat.demo.answer import Deps
from limachat.dialogues.store import INTERRUPTED, Store
from limachat.serve import vllm_plugin
from limachat.serve.client import StreamBroken
from limachat.settings import Settings

LONG = "Write a long story about a lighthouse keeper who counts the waves, with many details."


def port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_sigkill_of_the_app_mid_stream_then_restart_offers_retry(vllm_server, tmp_path):
    """A real SIGKILL of `limachat app` while a reply streams: the partial text stays in the database;
    the next start marks the reply interrupted, and the page shows it with retry, which works."""
    db = tmp_path / "limachat.db"
    procs: list = []
    with running_app(vllm_server, tmp_path, procs=procs) as url, browser_page() as page:
        page.goto(url)
        page.wait_for_selector("#chat-input textarea")
        page.locator("#annotator textarea, #annotator input").first.fill("ana")
        page.fill("#chat-input textarea", LONG)
        page.click("#chat-send")
        wait_for(
            lambda: (
                query(db, "select count(*) from turns where status = 'streaming' and length(content) > 20")[0][0] == 1
            ),
            "a partial reply saved",
            timeout=120,
        )
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
    ((status, partial),) = query(db, "select status, content from turns where role = 'assistant'")
    assert status == "streaming" and partial, "what a crash leaves: the partial text, still marked streaming"

    # The retry only has to answer: 64 tokens (the killed reply above ran at the default length).
    with (
        running_app(vllm_server, tmp_path, settings={"LIMACHAT_SAMPLING__MAX_TOKENS": "64"}) as url,
        browser_page() as page,
    ):
        ((status, content, error),) = query(db, "select status, content, error from turns where role = 'assistant'")
        assert (status, error) == ("error", INTERRUPTED) and content == partial
        page.goto(url)
        page.wait_for_selector("#chat-input textarea")
        page.locator("#chat-sessions input").click()
        page.get_by_role("option").first.click()
        page.get_by_text("interrupted: the app stopped while this reply was streaming").first.wait_for()
        page.locator("#chat-bot button[aria-label=Retry]").last.click()
        wait_for(
            lambda: query(db, "select count(*) from turns where role = 'assistant' and status = 'ok'")[0][0] == 1,
            "the retried reply",
            timeout=300,
        )
    assert query(db, "select count(*) from turns where status = 'streaming'") == [(0,)]
    assert query(db, "pragma integrity_check") == [("ok",)]


KEEPER = """
import sys, time
time.sleep(120)  # stands in for a server; given the module name as an argument, its command line names vLLM's
"""


def test_the_next_serve_recognises_its_own_stale_server_and_nothing_else(tmp_path):
    """The pidfile names the server a home started; a process with that pid, start time and command
    line is stopped before a new server takes the port. Another process is never touched."""
    from limachat.serve.server import pidfile, stale_server, stop_stale

    settings = Settings(home=tmp_path)
    port = settings.server.port
    stale = subprocess.Popen([sys.executable, "-c", KEEPER, "vllm.entrypoints.openai.api_server"])
    other = subprocess.Popen([sys.executable, "-c", KEEPER])
    try:
        path = pidfile(tmp_path, port)
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"pid": other.pid, "started": procs.started(other.pid)}))
        assert stale_server(tmp_path, port) is None, "not a vLLM server: left alone"
        path.write_text(json.dumps({"pid": stale.pid, "started": procs.started(stale.pid) + 5}))
        assert stale_server(tmp_path, port) is None, "a reused pid (another start time): left alone"
        path.write_text(json.dumps({"pid": stale.pid, "started": procs.started(stale.pid)}))
        assert stale_server(tmp_path, port).pid == stale.pid
        assert stop_stale(tmp_path, port) == stale.pid
        assert stale.wait(timeout=30) is not None and other.poll() is None and not path.exists()
    finally:
        for p in (stale, other):
            p.kill()
            p.wait()


def test_sigkill_of_serve_takes_its_vllm_server_down(trained_home, tiny_env):
    """`kill -9` of `limachat serve`: the vLLM server it started gets the parent-death signal and
    frees the port within 10 s; a new `limachat serve` on the same port comes up. Both run with limachat's
    vLLM patches (the plugin says so). Beside them, from the start, a third `limachat serve` runs with the
    patches' version range set to exclude the installed vLLM: it comes up, answers, and says, in one warning
    per vLLM process, that they stand aside. It starts first because it is the slow one (vLLM's own `spawn`
    of each process), and most of a start is one core importing vLLM."""
    port, aside_port = free_port(), free_port()
    aside = RunningServer(trained_home, aside_port, env={**tiny_env, "LIMACHAT_VLLM_PATCH_RANGE": "<0.1"})
    first = RunningServer(trained_home, port, env=tiny_env)
    servers = [aside, first]
    try:
        first.wait_ready()
        vllm_log = trained_home / "logs" / f"vllm-{port}.log"
        applied = ", ".join(p.name for p in vllm_plugin.PATCHES)  # all of them, on this vLLM and CPU
        assert f"limachat's vLLM patches applied: {applied}" in vllm_log.read_text()
        assert "standing aside" not in vllm_log.read_text()
        assert not port_free(port)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
        killed = time.monotonic()
        while not port_free(port) and time.monotonic() - killed < 10:
            time.sleep(0.2)
        freed = time.monotonic() - killed
        assert port_free(port), "the port is still held 10 s after the supervisor died"
        wait_for(lambda: not first.leftovers(), "vLLM's processes to exit", timeout=30)
        started = len(vllm_log.read_text())
        again = RunningServer(trained_home, port, env=tiny_env)
        servers.append(again)
        again.wait_ready()
        assert "left on port" not in again.output(), "nothing stale was there to replace"
        assert f"limachat's vLLM patches applied: {applied}" in vllm_log.read_text()[started:]
        aside.wait_ready()
        for server in (again, aside):
            assert (
                httpx.post(
                    server.url + "/chat/completions",
                    headers=server.headers,
                    timeout=60,
                    json={"model": "dialogue", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
                ).status_code
                == 200
            )
        aside_log = (trained_home / "logs" / f"vllm-{aside_port}.log").read_text()
        warnings = {
            line.split("WARNING", 1)[1].split("]", 1)[-1].strip()
            for line in aside_log.splitlines()
            if "WARNING" in line and "limachat's vLLM patches" in line
        }
        assert len(warnings) == 1 and "standing aside" in next(iter(warnings)), warnings
        assert "lora-no-adapter-rows (vLLM 0.32.0 is outside <0.1" in next(iter(warnings))
        for server in (again, aside):
            server.interrupt()
        print(f"port freed {freed:.1f} s after SIGKILL")
    finally:  # the supervisor first: alive, it would start the vLLM killed here again (a failed assertion above)
        for server in servers:
            server.proc.kill()
            server.proc.wait()
            for p in server.leftovers():
                p.kill()


@pytest.mark.kills_vllm
def test_vllm_killed_mid_stream_keeps_the_partial_reply_and_retry_works_once_it_is_back(vllm_server, tmp_path):
    """SIGKILL of the real vLLM process while a reply streams (default sampling and length): the
    reply keeps its text with status error and a clear message; `limachat serve` says vLLM stopped
    and starts it again; then retry answers."""
    vllm_server.wait_compiled()  # so that the restart below is a next start, which loads the compiled model
    settings = vllm_server.settings(tmp_path)
    deps = Deps(
        Store(tmp_path / "app.db"),
        {"dialogue": vllm_server.checkpoint("dialogue")},
        settings,
    )
    vllm = vllm_server.vllm()

    async def go():
        outs = []
        async for state, v in chat.send(deps, chat.blank(), LONG, "dialogue", "ana"):
            outs.append((state, v))
            if len(outs) == 5:
                vllm.send_signal(signal.SIGKILL)
        return outs

    outs = asyncio.run(go())
    state, v = outs[-1]
    reply = deps.store.turn(state["ids"][-1])
    assert reply["status"] == "error" and len(reply["content"]) > 0, "the text streamed before the kill is kept"
    assert reply["error"] in (
        StreamBroken.public,
        "its server cannot be reached (stopped, starting, or a wrong address)",
    )
    assert (
        v.history[-1]["content"].startswith(reply["content"].strip()[:20])
        and "⚠️ **dialogue:" in v.history[-1]["content"]
    )
    assert "retry" in v.history[-1]["content"]

    wait_for(
        lambda: "vLLM stopped (exit code" in vllm_server.output() and vllm_server.output().count("vLLM ready") == 2,
        "limachat serve to start vLLM again",
        timeout=300,
    )
    assert vllm_server.proc.poll() is None and "Restarting it (1 of 3)" in vllm_server.output()
    # The first start compiled in the background (the session's vLLM cache was empty): this one loads it.
    assert vllm_server.last_start() == ["processes", "weights", "cached", "engine"]
    state, v = asyncio.run(_last(chat.regenerate(deps, state, 1, "dialogue", "ana")))
    assert deps.store.turn(state["ids"][-1])["status"] == "ok"
    assert [t["status"] for t in deps.store.turns(state["session"]) if t["role"] == "assistant"] == ["error", "ok"]
    deps.store.close()


async def _last(gen):
    out = None
    async for item in gen:
        out = item
    return out
