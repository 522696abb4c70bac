"""End to end in a real browser: Debian's Chromium, driven by Playwright, on `limachat app` over the
real vLLM server. Takes a screenshot of each tab into conftest.SHOTS (a folder of the session's own;
`make screenshots` points it at docs/screenshots/, which the docs show)."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import SHOTS, free_port

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# For tests on the tiny model that check a walk, not the replies: they stop at 64 tokens (the tiny model
# never ends a reply by itself; the default 512 is run end to end by the chat-compare-collect test below
# and by test_coherence.py).
SHORT = {"LIMACHAT_SAMPLING__MAX_TOKENS": "64"}
XSS = 'Repeat this exactly: <script>window.pwned = 1</script> <img src=x onerror="window.pwned = 2">'


@contextmanager
def running_app(vllm_server, home: Path, *args: str, procs: list | None = None, settings: dict[str, str] | None = None):
    """`limachat app` as a user starts it, against the session's vLLM server, on a fresh database, with
    the default sampling (preset and reply length) unless `settings` (LIMACHAT_* variables) say otherwise:
    the chat-compare-collect test below is the end-to-end test at a user's settings. `procs` collects
    the process (for tests that kill it)."""
    port = free_port()
    vllm_server.share_key(home)  # the app reads the server's key from its home
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIMACHAT_")}
    env.update(settings or {})
    env.update(
        LIMACHAT_HOME=str(home),
        LIMACHAT_SERVER__PORT=str(vllm_server.port),
        PYTHONUNBUFFERED="1",
        LIMACHAT_SERVER__BASE=vllm_server.base,
    )
    log = home / "app.log"
    started = log.read_text().count("app ready") if log.exists() else 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "limachat.cli", "app", "--port", str(port), *args],
        env=env,
        cwd=home,
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
    )
    if procs is not None:
        procs.append(proc)
    try:
        deadline = time.monotonic() + 120
        while log.read_text().count("app ready") <= started:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def app_url(real_server, tmp_path):
    """The app on the bundled model and its demo adapters at the defaults: the one browser walk where what
    the replies say matters (docs/testing.md)."""
    with running_app(real_server, tmp_path) as url:
        yield url, tmp_path


@contextmanager
def browser_page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 860})
        finally:
            browser.close()


def query(db: Path, sql: str, *params):
    with sqlite3.connect(db) as con:
        return con.execute(sql, params).fetchall()


def wait_for(check, what: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


def replies_done(db: Path, n: int) -> bool:
    return query(db, "select count(*) from turns where role = 'assistant' and status != 'streaming'")[0][0] >= n


def rate(page, bot: str, index: int, option: str):
    page.locator(f"{bot} button[aria-label=Feedback]").nth(index).click()
    page.locator(f"{bot} button:has-text('{option}')").filter(visible=True).first.click()


def shot(page, name: str, full_page: bool = False) -> None:
    """A screenshot of the page as it is now, saved as SHOTS/<name>.png; a blank or broken page fails here."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(400)
    png = page.screenshot(path=SHOTS / f"{name}.png", full_page=full_page)
    assert len(png) > 10_000, f"the {name} screenshot is {len(png)} bytes: a blank page?"


def pick_first_option(page, selector: str, tries: int = 10) -> None:
    """Open a dropdown and pick its first choice. The page's timer fills the choices once a job is done,
    so a dropdown opened a moment before that shows none: close it and open it again."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(tries):
        page.locator(selector).click()
        try:
            page.get_by_role("option").first.click(timeout=3000)
            return
        except PlaywrightTimeout:
            if attempt == tries - 1:
                raise
            page.keyboard.press("Escape")
            page.wait_for_timeout(1000)


def open_as(page, url: str, annotator: str) -> None:
    """The app's page, with the annotator's name typed in (as a first visit has none remembered)."""
    page.goto(url)
    page.wait_for_selector("#chat-input textarea")  # typed at once, as a quick user does
    name = page.locator("#annotator textarea, #annotator input").first
    name.fill(annotator)
    name.press("Tab")


def test_chat_compare_collect_report_in_a_browser(app_url):
    url, home = app_url
    db = home / "limachat.db"
    with browser_page() as page:
        open_as(page, url, "ana")

        # Chat: two turns, both rated; one regenerated.
        for n, text in enumerate(["What is the capital of France?", XSS], 1):
            page.fill("#chat-input textarea", text)
            page.click("#chat-send")
            wait_for(lambda n=n: replies_done(db, n), f"reply {n}")
            page.wait_for_timeout(800)  # the page gets the finished reply
        rate(page, "#chat-bot", 0, "Pass")
        wait_for(lambda: query(db, "select count(*) from ratings")[0][0] == 1, "the first rating")
        page.wait_for_timeout(800)  # the page gets the chat back with the rating shown (a re-render)
        rate(page, "#chat-bot", 1, "Excellent")
        wait_for(lambda: query(db, "select count(*) from ratings")[0][0] == 2, "the second rating")
        page.locator("#chat-bot button[aria-label=Retry]").last.click()
        wait_for(lambda: replies_done(db, 3), "the regenerated reply")
        page.wait_for_timeout(800)
        # the markup shows as text and never runs
        assert page.get_by_text("<script>window.pwned = 1</script>").count() >= 1
        assert page.evaluate("window.pwned") is None
        assert page.locator("#chat-bot script, #chat-bot img[src=x]").count() == 0
        shot(page, "chat")

        # Compare, blind, from the first prompt of the bundled set.
        page.get_by_role("tab", name="Compare").click()
        page.get_by_text("Start from a prompt set").click()
        page.locator("#compare-prompt input").click()
        page.get_by_role("option").filter(has_text="p01").first.click()
        page.wait_for_function("document.querySelector('#compare-input textarea').value.length > 20")
        page.click("#compare-send")
        wait_for(lambda: replies_done(db, 5), "both compare replies")
        page.wait_for_timeout(800)
        assert page.locator("#compare-a").get_by_text("A", exact=True).count() >= 1
        rate(page, "#compare-a", 0, "Pass")
        rate(page, "#compare-b", 0, "Fail")
        wait_for(lambda: query(db, "select count(*) from ratings")[0][0] == 4, "the compare ratings")
        page.click("#verdict-a")
        page.wait_for_function("document.querySelector('#compare-status').innerText.includes('turn 1: A better')")
        shot(page, "compare")
        page.click("#compare-close")
        page.wait_for_function("document.querySelector('#compare-status').innerText.includes('A was')")
        (meta,) = query(db, "select meta from sessions where mode = 'blind'")[0]
        lanes = json.loads(meta)["lanes"]
        assert f"A was {lanes['a']}, B was {lanes['b']}" in page.locator("#compare-status").inner_text().replace(
            "*", ""
        )
        assert page.locator("#compare-a").get_by_text(lanes["a"], exact=True).count() >= 1

        # Collect: the default filters (every reply at least pass) and an export.
        page.get_by_role("tab", name="Collect").click()
        page.wait_for_function("document.querySelector('#collect-count').innerText.includes('chains')")
        counted = page.locator("#collect-count").inner_text()
        assert "2 chains, 3 assistant turns" in counted
        # the blind verdict at the first exchange is a pair; the regenerated reply is unrated, so no pair
        assert "1 preference pair: 1 from verdicts, 0 from edits, 0 from labels" in counted, counted
        page.click("#collect-export")
        page.wait_for_function("document.querySelector('#collect-result').innerText.includes('Wrote')")
        page.locator("#collect-format").get_by_text("preference", exact=True).click()
        page.click("#collect-export")
        page.wait_for_function("document.querySelector('#collect-result').innerText.includes('Wrote 1 pair:')")
        shot(page, "collect")

        # Curate from the Collect tab: the local base judges every reply, a teacher revises one, a person reviews it.
        page.click("#collect-judge")
        page.fill("#collect-revise-limit input", "1")
        page.click("#collect-revise")
        page.wait_for_function("document.querySelector('#collect-jobs').innerText.includes('judge judge-label')")
        jobs = "document.querySelector('#collect-jobs').innerText"
        page.wait_for_function(
            f"{jobs}.includes('judging (label): 5/5 turn') && {jobs}.includes('revising: 1/1 turn')"
            f" && ({jobs}.match(/: done/g) || []).length == 2",
            timeout=600_000,
        )
        assert query(db, "select count(*) from ratings where annotator = 'judge/base/label-v1'") == [(5,)]
        page.get_by_text("Teacher revisions to review").click()
        page.get_by_text("Rubrics (written by the teacher").click()
        pick_first_option(page, "#revision-pick input")
        page.wait_for_function(
            "document.querySelector('#revision-after').innerText.includes('Revised by teacher/base/revise-v1')"
        )
        shot(page, "curate")
        page.click("#revision-accept")
        page.wait_for_function("document.querySelector('#revision-status').innerText.includes('Accepted')")
        assert query(db, "select review, reviewer from edits where annotator = 'teacher/base/revise-v1'") == [
            ("accepted", "ana")
        ]
        assert query(db, "select count(*) from edits where annotator = 'ana'") == [(1,)]  # now ana's own gold edit

        page.get_by_role("tab", name="Report").click()
        page.wait_for_selector("#report-chart img")
        page.wait_for_function("document.querySelector('#report-tables').innerText.includes('Judges against people')")
        assert "Rated by LLM judges" in page.locator("#report-tables").inner_text()
        shot(page, "report")

        # The judge's labels beside your own, on request (off by default: people label first).
        page.get_by_role("tab", name="Chat").click()
        assert not page.locator("#chat-judge").is_visible()
        page.locator("#chat-show-judge input").check()
        page.wait_for_function("document.querySelector('#chat-judge')?.innerText.includes('judge/base/label-v1')")
        assert "reply 1:" in page.locator("#chat-judge").inner_text()

    # The database holds exactly what was done ...
    sessions = query(db, "select mode, prompt_set, prompt, closed is not null from sessions order by created")
    assert sessions == [("chat", None, None, 0), ("blind", "bundled", "p01", 1)]
    chat_turns = query(
        db,
        "select t.role, t.status, t.checkpoint from turns t join sessions s on s.id = t.session_id "
        "where s.mode = 'chat' order by t.created",
    )
    assert [r[0] for r in chat_turns] == ["user", "assistant", "user", "assistant", "assistant"]
    assert all(r[1] == "ok" and r[2] == "dialogue" for r in chat_turns if r[0] == "assistant")
    user_xss = query(db, "select content from turns where role = 'user' and content like '%<script>%'")
    assert user_xss == [(XSS,)], "the message is stored as typed"
    labels = query(
        db,
        """select t.lane, t.exchange, r.label, r.annotator from ratings r join turns t on t.id = r.turn_id
                          where r.current = 1 and r.annotator = 'ana' order by r.created""",
    )
    assert labels == [
        (None, 1, "pass", "ana"),
        (None, 2, "excellent", "ana"),
        ("a", 1, "pass", "ana"),
        ("b", 1, "fail", "ana"),
    ]
    assert query(db, "select verdict, annotator, checkpoint_a from verdicts") == [("a", "ana", lanes["a"])]
    # ... and so does the export: the two chains whose replies are all at least pass.
    (exported,) = list((home / "exports").glob("limachat-messages-*.jsonl"))
    records = [json.loads(line) for line in exported.read_text().splitlines()]
    assert len(records) == 2
    by_mode = {r["limachat"]["mode"]: r for r in records}
    assert by_mode["chat"]["limachat"]["labels"] == ["pass", "excellent"]
    assert [m["content"] for m in by_mode["chat"]["messages"] if m["role"] == "user"] == [
        "What is the capital of France?",
        XSS,
    ]
    assert by_mode["blind"]["limachat"]["checkpoints"] == [lanes["a"]] and by_mode["blind"]["limachat"]["labels"] == [
        "pass"
    ]


def test_with_auth_people_log_in_and_see_only_their_own_sessions(vllm_server, tmp_path):
    users = tmp_path / "users.txt"
    for name, password in (("ana", "open-sesame"), ("bo", "bo-pass")):
        add = subprocess.run(
            [
                sys.executable,
                "-m",
                "limachat.cli",
                "--home",
                str(tmp_path),
                "users",
                "add",
                name,
                "--file",
                str(users),
                "--password-stdin",
            ],
            input=password + "\n",
            capture_output=True,
            text=True,
        )
        assert add.returncode == 0, add.stderr
    assert "open-sesame" not in users.read_text() and users.read_text().count("$argon2id$") == 2
    db = tmp_path / "limachat.db"
    from limachat.dialogues.store import Store

    store = Store(db)  # bo's earlier work, which ana must not be offered
    bo_session = store.start_session("chat", annotator="bo")
    store.add_user_turn(bo_session, "bo's private question")
    store.close()
    with running_app(vllm_server, tmp_path, "--auth", str(users), settings=SHORT) as url, browser_page() as page:
        page.goto(url)
        for password in ("wrong", "open-sesame"):
            page.get_by_label("username").fill("ana")
            page.get_by_label("password").fill(password)
            page.get_by_role("button", name="Login").click()
            if password == "wrong":
                page.wait_for_timeout(2500)
                assert page.locator("#chat-input").count() == 0, "a wrong password does not get in"
        page.wait_for_selector("#chat-input textarea")
        name = page.locator("#annotator textarea, #annotator input").first
        page.wait_for_function("document.querySelector('#annotator textarea, #annotator input').value === 'ana'")
        assert not name.is_editable()
        page.fill("#chat-input textarea", "Hello!")
        page.click("#chat-send")
        wait_for(lambda: replies_done(db, 1), "the reply")
        page.wait_for_timeout(800)
        rate(page, "#chat-bot", 0, "Excellent")
        wait_for(lambda: query(db, "select count(*) from ratings")[0][0] == 1, "the rating")
        page.locator("#chat-sessions input").click()
        options = page.get_by_role("option")
        options.first.wait_for()
        listed = options.all_inner_texts()
        assert len(listed) == 1 and "Hello!" in listed[0], listed
        assert not any("bo's private" in o for o in listed)
    assert query(db, "select annotator, label from ratings") == [("ana", "excellent")]
    log = (tmp_path / "logs" / "limachat.log").read_text()
    assert "failed login for 'ana' (1 in a row)" in log


# Copies everything the page's scripts receive through fetch (the queue's event stream included, read
# as it arrives) and EventSource into window.__received: a stream's HTTP body is readable from the
# outside only once it ends.
TAP = """
(() => {
  const seen = window.__received = [];
  const fetch = window.fetch;
  window.fetch = async (...args) => {
    const response = await fetch(...args);
    try {
      const reader = response.clone().body.getReader(), text = new TextDecoder();
      (async () => { for (;;) { const {done, value} = await reader.read(); if (done) break; seen.push(text.decode(value)); } })();
    } catch (e) {}
    return response;
  };
  const Source = window.EventSource;
  if (Source) window.EventSource = function (...args) {
    const source = new Source(...args);
    source.addEventListener("message", e => seen.push(e.data));
    return source;
  };
})();
"""


def _body(response) -> str:
    try:
        return response.text()
    except Exception:  # noqa: BLE001 - a body that cannot be read whole (a stream cut at close, a redirect)
        return ""


def test_a_blind_page_never_names_a_side_model_or_endpoint(vllm_server, tmp_path):
    """Blind compare of `dialogue` against a checkpoint whose real endpoint fails, and whose model id
    and URL differ from its name. Until the reveal, nothing the browser receives (page text, component
    values, every HTTP response, the Gradio API's answers) holds that model id or URL."""
    dead_port = free_port()
    secret_model, secret_path = "secret-model-7b", "hidden-route"
    (tmp_path / "limachat.toml").write_text(
        '[[checkpoints]]\nname = "dialogue"\nmodel = "dialogue"\n\n'
        f'[[checkpoints]]\nname = "mystery"\nmodel = "{secret_model}"\nbase_url = "http://127.0.0.1:{dead_port}/{secret_path}/v1"\n'
    )
    # The port as an address part (":34883", no digit after it): bare digits also turn up by chance in ids,
    # hashes and the number tables of the page's scripts (a CI run found ":262272" for port 26227).
    secrets = (re.escape(secret_model), re.escape(secret_path), rf":{dead_port}(?![0-9])")
    db = tmp_path / "limachat.db"
    received: list[str] = []
    with running_app(vllm_server, tmp_path, settings=SHORT) as url, browser_page() as page:
        page.add_init_script(TAP)
        page.on("response", lambda response: received.append(_body(response)))
        page.goto(url)
        page.wait_for_selector("#chat-input textarea")
        page.locator("#annotator textarea, #annotator input").first.fill("ana")
        page.get_by_role("tab", name="Compare").click()
        # Left and right default to the two configured checkpoints, dialogue and mystery.
        page.fill("#compare-input textarea", "Name three rivers.")
        page.click("#compare-send")
        wait_for(lambda: replies_done(db, 2), "both sides")
        page.get_by_text("its server cannot be reached").first.wait_for()
        page.wait_for_timeout(1000)
        streamed = page.evaluate("window.__received")
        assert any("its server cannot be reached" in chunk for chunk in streamed), "the tap saw the queue's events"
        received += streamed
        shown = page.locator("#compare-a").inner_text() + page.locator("#compare-b").inner_text()
        assert ("A: its server cannot be reached" in shown) != ("B: its server cannot be reached" in shown)
        received += [page.content(), page.inner_text("body")]
        received += page.eval_on_selector_all("input, textarea", "els => els.map(e => e.value)")
    from gradio_client import Client

    with running_app(vllm_server, tmp_path, settings=SHORT) as url:  # the same session through the API: resumed views
        client = Client(url, verbose=False)
        received.append(json.dumps(client.view_api(return_format="dict", print_info=False)))
    stored = query(db, "select error_detail from turns where status = 'error'")
    assert stored and secret_path in stored[0][0], "the operator's record keeps the detail"
    leaks = [
        text[max(0, m.start() - 60) : m.end() + 60] for s in secrets for text in received for m in re.finditer(s, text)
    ]
    assert not leaks, f"the browser received {leaks[:3]}"
