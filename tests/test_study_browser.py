"""A small two-checkpoint study end to end in a real browser, by keyboard: defined in the Study tab,
walked in the Compare tab with one key per rating, resumed once after a reload in the middle of a
conversation, a gold edit made in Chat, and the report exported to HTML, opened in Chromium and
screenshot for the docs. Over the real vLLM server at the app's default sampling, replies cut at 64 tokens."""

from __future__ import annotations

import json
import re
import time

from test_app_browser import SHORT, browser_page, open_as, query, replies_done, running_app, shot, wait_for

from limachat.dialogues import bundled
from limachat.dialogues.formats import load_prompts

KEY = {"fail": "1", "pass": "2", "excellent": "3"}
CHAT = [
    ("Give me one tip for sleeping better.", "pass"),
    ("Why does that help?", "excellent"),
    ("And one more tip?", "pass"),
    ("Thanks. Summarise both tips in a sentence.", "excellent"),
]


class Keys:
    """Presses keys on the page, counting what a rating costs: key presses and clicks per rated reply,
    and the time from the key to the rating being stored."""

    def __init__(self, page, db):
        self.page, self.db = page, db
        self.rating_actions = 0  # key presses and clicks spent on ratings
        self.latencies: list[float] = []

    def ratings(self) -> int:
        return query(self.db, "select count(*) from ratings where annotator = 'ana'")[0][0]

    def rate(self, label: str) -> None:
        before, start = self.ratings(), time.monotonic()
        self.page.keyboard.press(KEY[label])
        self.rating_actions += 1
        wait_for(lambda: self.ratings() > before, f"the rating {label}", timeout=30)
        self.latencies.append(time.monotonic() - start)

    def write(self, text: str) -> None:
        """`/` to the message box, the text, Enter (which sends and leaves the box)."""
        self.page.keyboard.press("/")
        self.page.keyboard.type(text)
        self.page.keyboard.press("Enter")


def new_study(page, name: str, *, conversations: int, turns: int, history: str = "own", prompts: str = "bundled"):
    """A study for ana, defined in the Study tab's New study form."""
    page.get_by_role("tab", name="Study").click()
    page.get_by_text("New study").click()
    page.fill("#study-name textarea, #study-name input", name)
    page.fill("#study-conversations input", str(conversations))
    page.fill("#study-turns input", str(turns))
    page.fill("#study-annotators textarea, #study-annotators input", "ana")
    page.locator("#study-history label", has_text=history).click()
    page.locator("#study-set label", has_text=prompts).click()
    page.click("#study-create")
    page.wait_for_function(f"document.querySelector('#study-created').innerText.includes('Created study {name}')")


def caption_says(page, selector: str, text: str) -> None:
    page.wait_for_function(f"document.querySelector('{selector}')?.innerText.includes({text!r})", timeout=600_000)


def test_a_two_checkpoint_study_by_keyboard(vllm_server, tmp_path):
    db = tmp_path / "limachat.db"
    with running_app(vllm_server, tmp_path, settings=SHORT) as url, browser_page() as page:
        keys = Keys(page, db)
        open_as(page, url, "ana")

        # The study: zero-shot against dialogue, 2 conversations each of 2 turns, blind, for ana.
        new_study(page, "pilot", conversations=2, turns=2)

        # Chat: four replies, each rated with one key as it arrives.
        page.get_by_role("tab", name="Chat").click()
        for n, (text, label) in enumerate(CHAT, 1):
            keys.write(text)
            wait_for(lambda n=n: replies_done(db, n), f"chat reply {n}", timeout=600)
            caption_says(page, "#chat-caption", f"reply {n} of {n}")
            keys.rate(label)
            caption_says(page, "#chat-caption", f"your label: {label}")
        # An earlier reply, re-rated: up one, then the key.
        page.keyboard.press("ArrowUp")
        caption_says(page, "#chat-caption", "reply 3 of 4")
        page.keyboard.press(KEY["fail"])
        caption_says(page, "#chat-caption", "reply 3 of 4 · your label: fail")
        # A gold edit: the reply says it was edited and by whom; the original is one click away.
        bot = page.locator("#chat-bot")
        original = query(db, "select content from turns where role = 'assistant' order by created desc limit 1")[0][0]
        bot.locator("button[aria-label=Edit]").last.click()
        bot.locator("textarea").last.fill("Keep a regular bedtime and keep screens out of the bedroom.")
        bot.get_by_role("button", name="Submit").click()
        page.locator("#chat-bot details.gold summary").last.wait_for()
        assert "edited by ana" in page.locator("#chat-bot details.gold summary").last.inner_text()
        assert not page.locator("#chat-bot details.gold").last.evaluate("e => e.open")
        page.locator("#chat-bot details.gold summary").last.click()
        assert page.locator("#chat-bot details.gold").last.evaluate("e => e.open")
        word = max(
            re.findall(r"[A-Za-z]{4,}", original), key=len
        )  # a word of the original, whatever Markdown made of it
        assert word in page.locator("#chat-bot details.gold").last.inner_text()
        shot(page, "chat-keys")

        # The study, walked in the Compare tab: n starts the next prompt; the keys rate side A, then B.
        page.get_by_role("tab", name="Compare").click()
        page.locator("#compare-study input").click()
        page.get_by_role("option", name="pilot").click()
        done = len(CHAT)

        def exchange(n_replies: int, turn: int, labels: tuple[str, str], verdict: str) -> None:
            wait_for(lambda: replies_done(db, n_replies), f"both sides of turn {turn}", timeout=600)
            for side in ("a", "b"):
                caption_says(page, f"#compare-{side}-caption", f"reply {turn} of {turn}")
            for label in labels:
                keys.rate(label)
            page.keyboard.press(verdict)
            caption_says(page, "#compare-status", f"turn {turn}:")

        page.wait_for_timeout(500)
        page.keyboard.press("n")
        exchange(done + 2, 1, ("pass", "excellent"), "a")
        caption_says(page, "#study-status", "conversation 1 of 2: turn 2 of 2")
        keys.write("Can you say that more simply?")
        exchange(done + 4, 2, ("excellent", "pass"), "t")
        caption_says(page, "#study-status", "has reached its 2 turns")
        assert page.locator("#compare-a").get_by_text("A", exact=True).count() >= 1  # blind: the sides are A and B
        page.evaluate("window.scrollTo(0, 0)")
        shot(page, "study-compare", full_page=True)

        page.keyboard.press("n")
        exchange(done + 6, 1, ("fail", "pass"), "b")
        # Resumed in the middle: the page reloads (the browser's state is gone); n brings back the same
        # conversation, both sides, the ratings and the verdict, still blind.
        page.reload()
        page.wait_for_selector("#chat-input textarea")
        page.wait_for_function("document.querySelector('#annotator textarea, #annotator input').value === 'ana'")
        page.get_by_role("tab", name="Compare").click()
        page.locator("#compare-study input").click()
        page.get_by_role("option", name="pilot").click()
        page.wait_for_timeout(500)
        page.keyboard.press("n")
        caption_says(page, "#compare-a-caption", "A: reply 1 of 1 · your label: fail")
        caption_says(page, "#compare-b-caption", "B: reply 1 of 1 · your label: pass")
        caption_says(page, "#compare-status", "turn 1: B better")
        caption_says(page, "#study-status", "conversation 2 of 2: turn 2 of 2")
        keys.write("What would you change about it?")
        exchange(done + 8, 2, ("pass", "excellent"), "a")
        caption_says(page, "#study-status", "has reached its 2 turns")
        page.keyboard.press("n")
        page.get_by_text("your walk is done").first.wait_for()

        # The board and the report; the report as one page, opened in the browser.
        page.get_by_role("tab", name="Study").click()
        page.locator("#study-pick input").click()
        page.get_by_role("option", name="pilot").click()
        page.wait_for_function("document.querySelector('#study-report').innerText.includes('Labels per checkpoint')")
        board = page.locator("#study-board").inner_text()
        assert board.count("2 / 2") == 2 and board.count("4 / 4") == 2, board
        page.wait_for_selector("#study-chart img")
        shot(page, "study")
        report = tmp_path / "reports" / "study-pilot.html"
        assert page.locator("#study-html a").first.get_attribute("href").endswith("study-pilot.html")
        page.goto(report.as_uri())
        page.wait_for_selector("img[alt='label shares and leaderboard']")
        assert page.evaluate("document.querySelector('img').naturalWidth") > 500, "the chart is in the page itself"
        assert "Leaderboard (Bradley-Terry)" in page.inner_text("body")
        page.set_viewport_size({"width": 1150, "height": 1400})
        shot(page, "study-report", full_page=True)

    # One key press per rated reply: 12 replies (4 in Chat, 8 in the study's two lanes).
    rated = query(
        db,
        """select s.mode, t.lane, r.label from ratings r join turns t on t.id = r.turn_id
                         join sessions s on s.id = t.session_id where r.current = 1 and r.annotator = 'ana'""",
    )
    assert len(rated) == 12 and sum(m == "blind" for m, _, _ in rated) == 8
    assert sorted(lane for m, lane, _ in rated if m == "blind") == ["a"] * 4 + ["b"] * 4
    assert keys.rating_actions == 12 and keys.rating_actions / len(rated) == 1.0
    assert query(
        db,
        "select label from ratings r join turns t on t.id = r.turn_id where t.exchange = 3 and t.lane is null "
        "and r.current = 1",
    ) == [("fail",)], "the re-rated earlier reply"
    chat_labels = query(
        db,
        """select r.label from ratings r join turns t on t.id = r.turn_id join sessions s on s.id = t.session_id
                               where s.mode = 'chat' and r.current = 1 order by t.exchange""",
    )
    assert [x for (x,) in chat_labels] == ["pass", "excellent", "fail", "excellent"]
    sessions = query(db, "select study, slot, mode from sessions where study is not null order by created")
    assert [(s, m) for s, _, m in sessions] == [("pilot", "blind")] * 2 and len({slot for _, slot, _ in sessions}) == 2
    verdicts = query(db, "select v.verdict from verdicts v join turns t on t.id = v.turn_a order by v.created")
    assert [v for (v,) in verdicts] == ["a", "tie", "b", "a"]
    assert query(db, "select annotator from edits") == [("ana",)]
    print(
        f"\nkey presses and clicks per rated reply: {keys.rating_actions / len(rated):.2f} ({keys.rating_actions} for "
        f"{len(rated)}); key to stored rating: median {sorted(keys.latencies)[len(keys.latencies) // 2]:.2f} s, "
        f"max {max(keys.latencies):.2f} s, total {sum(keys.latencies):.1f} s"
    )


def test_a_study_under_both_histories_with_scripted_followups(vllm_server, tmp_path):
    """`--history both` in the browser: the Study tab defines it on the bundled scripted set; n sends the
    opening prompt and then the scripted follow-up; the shared condition waits for a verdict and then both
    sides continue from the preferred reply; the report gives both conditions and their difference."""
    db = tmp_path / "limachat.db"
    with running_app(vllm_server, tmp_path, settings=SHORT) as url, browser_page() as page:
        keys = Keys(page, db)
        open_as(page, url, "ana")
        new_study(page, "hist", conversations=1, turns=2, history="both", prompts="scripted")
        caption_says(page, "#study-created", "under each history")

        page.get_by_role("tab", name="Compare").click()
        page.locator("#compare-study input").click()
        page.get_by_role("option", name="hist").click()
        page.wait_for_timeout(500)
        seen = []
        for conversation in (1, 2):
            before = query(db, "select count(*) from turns where role = 'assistant'")[0][0]
            page.keyboard.press("n")  # the opening prompt
            wait_for(lambda b=before: replies_done(db, b + 2), f"conversation {conversation}, turn 1", timeout=600)
            caption_says(page, "#study-status", "turn 2 of 2")
            status = page.locator("#study-status").inner_text()
            history = "shared" if "shared history" in status else "own"
            assert "press n for the scripted next question" in status, status
            seen.append(history)
            keys.rate("pass")
            keys.rate("excellent")
            if history == "shared":  # the scripted follow-up waits for the verdict that picks the history
                page.keyboard.press("n")
                page.get_by_text("give your verdict on this exchange first").first.wait_for()
            page.keyboard.press("b")
            caption_says(page, "#compare-status", "turn 1:")
            page.keyboard.press("n")  # the scripted follow-up, sent without typing
            wait_for(lambda b=before: replies_done(db, b + 4), f"conversation {conversation}, turn 2", timeout=600)
            caption_says(page, "#study-status", "has reached its 2 turns")
            keys.rate("fail")
            keys.rate("pass")
            page.keyboard.press("a")
            caption_says(page, "#compare-status", "turn 2:")
            if history == "shared":
                page.evaluate("window.scrollTo(0, 0)")
                shot(page, "history-compare", full_page=True)
        assert sorted(seen) == ["own", "shared"]
        page.keyboard.press("n")
        page.get_by_text("your walk is done").first.wait_for()

        page.get_by_role("tab", name="Study").click()
        page.locator("#study-pick input").click()
        page.get_by_role("option", name="hist").click()
        caption_says(page, "#study-report", "with each side's own history")  # the walk's report, not the empty one
        report = page.locator("#study-report").inner_text()
        assert "Labels per history" in report and "How much of the gain the history explains" in report
        for history in ("own", "shared"):
            for checkpoint in ("zero-shot", "dialogue"):  # one conversation of 2 rated turns each
                assert re.search(rf"{history}\s+{checkpoint}\s+1\s+2\s", report), (history, checkpoint, report)
        page.goto((tmp_path / "reports" / "study-hist.html").as_uri())
        page.wait_for_selector("img[alt='label shares and leaderboard']")
        page.set_viewport_size({"width": 1150, "height": 1400})
        page.get_by_text("How much of the gain the history explains").scroll_into_view_if_needed()
        shot(page, "history-report", full_page=True)

    # What the tree says each reply saw. Own history: each side's follow-up follows its own reply. Shared:
    # both follow side B's (the verdict was b).
    rows = query(
        db,
        """select s.meta, u.lane, u.content, p.id, p.lane, p.role from turns u join sessions s on s.id = u.session_id
           join turns p on p.id = u.parent_id where u.role = 'user' and u.exchange = 2 order by s.created, u.lane""",
    )
    scripted = {p["turns"][0] for p in load_prompts(bundled("scripted.jsonl"))}
    assert len(rows) == 4 and all(content in scripted for _, _, content, _, _, _ in rows)  # the scripted turn, sent
    for meta, lane, _, _, parent_lane, role in rows:
        assert role == "assistant"
        assert parent_lane == (lane if json.loads(meta)["history"] == "own" else "b")
    shared = [r for r in rows if json.loads(r[0])["history"] == "shared"]
    assert shared[0][3] == shared[1][3]  # one reply, both sides' history
    assert keys.rating_actions == 8
