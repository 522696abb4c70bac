"""A team's study in a real browser, by keyboard: three annotators, two raters per conversation. Two of
them drive a conversation each in the Compare tab (a key per rating, a reason by key c, a verdict on the
whole conversation by Shift+A / T / B); the one left, and whoever else shares a conversation, rates it from
the study's queue; an adjudicator settles the disagreements from a queue made in the Queue tab; the Study
tab shows agreement between people and how many conversations the study needs. Over the real vLLM server
at the app's default sampling, replies cut at 64 tokens (their length is not what this checks)."""

from __future__ import annotations

import re

from test_app_browser import SHORT, browser_page, open_as, query, replies_done, running_app, shot, wait_for
from test_study_browser import caption_says

from limachat.dialogues import study as studies
from limachat.dialogues.agreement import people_agreement
from limachat.dialogues.store import Store

KEY = {"fail": "1", "pass": "2", "excellent": "3"}


def off_loop(fn):
    """Playwright's sync API runs an event loop on this thread, where the store refuses to block."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


class Team:
    """One page, the annotator's name changed as the work passes hands; counts what ratings cost."""

    def __init__(self, page, url, db):
        self.page, self.url, self.db = page, url, db
        self.rating_keys = 0

    def ratings(self) -> int:
        return query(self.db, "select count(*) from ratings")[0][0]

    def be(self, name: str) -> None:
        field = self.page.locator("#annotator textarea, #annotator input").first
        field.fill(name)
        field.press("Tab")
        self.page.wait_for_timeout(300)

    def calm(self) -> None:
        """Nothing focused: the next key goes to the page's key handler, not a field."""
        self.page.evaluate("document.activeElement && document.activeElement.blur()")
        self.page.wait_for_timeout(300)

    def rate(self, label: str) -> None:
        before = self.ratings()
        self.page.keyboard.press(KEY[label])
        self.rating_keys += 1
        wait_for(lambda: self.ratings() > before, f"the rating {label}", timeout=30)

    def reason(self, text: str) -> None:
        before = query(self.db, "select count(*) from ratings where comment is not null")[0][0]
        self.page.keyboard.press("c")
        self.page.keyboard.type(text)
        self.page.keyboard.press("Enter")
        wait_for(
            lambda: query(self.db, "select count(*) from ratings where comment is not null")[0][0] > before,
            f"the reason {text!r}",
            timeout=30,
        )
        self.calm()

    def caption(self) -> str:
        return self.page.locator("#queue-caption").inner_text()

    def next_reply(self, before: str) -> None:
        """After a label in the queue: wait for the next reply (another place) or for none left; a caption
        still showing the last one (or Gradio's progress over it) is not yet the answer."""
        place = re.search(r"reply \d+ of \d+", before).group()
        self.page.wait_for_function(
            "([place]) => { const t = document.querySelector('#queue-caption').innerText;"
            " const m = t.match(/reply \\d+ of \\d+/);"
            " return t.includes('Nothing left') || (m !== null && m[0] !== place); }",
            arg=[place],
            timeout=60_000,
        )

    def pick(self, selector: str, option: str) -> None:
        self.page.locator(f"{selector} input").click()
        self.page.get_by_role("option", name=option, exact=True).click()
        self.calm()


def test_a_team_study_shared_queued_adjudicated_and_reported(vllm_server, tmp_path):
    db = tmp_path / "limachat.db"
    with running_app(vllm_server, tmp_path, settings=SHORT) as url, browser_page() as page:
        team = Team(page, url, db)
        open_as(page, url, "ana")

        # The study: 2 conversations of 1 turn, split among ana, bo and cy, two raters each; cy adjudicates.
        page.get_by_role("tab", name="Study").click()
        page.get_by_text("New study").click()
        page.fill("#study-name textarea, #study-name input", "team")
        page.fill("#study-conversations input", "2")
        page.fill("#study-turns input", "1")
        page.fill("#study-annotators textarea, #study-annotators input", "ana,bo,cy")
        page.fill("#study-raters input", "2")
        page.fill("#study-adjudicators textarea, #study-adjudicators input", "cy")
        page.click("#study-create")
        caption_says(page, "#study-created", "queue team-shared")
        split = off_loop(lambda: studies.assignments(Store(db).study("team")))
        drivers = [a.driver for a in split]
        assert len(set(drivers)) == 2, split  # two annotators drive, one each
        third = next(p for p in ("ana", "bo", "cy") if p not in drivers)

        # Each driver: n for their conversation, a key per reply, a reason, the whole conversation's verdict.
        plans = {drivers[0]: (("pass", "excellent"), "Shift+A"), drivers[1]: (("fail", "pass"), "Shift+B")}
        for n, driver in enumerate(drivers, 1):
            team.be(driver)
            page.get_by_role("tab", name="Compare").click()
            if n == 1:
                team.pick("#compare-study", "team")
            team.calm()
            page.keyboard.press("n")
            wait_for(lambda n=n: replies_done(db, 2 * n), f"both sides of {driver}'s conversation", timeout=600)
            for side in ("a", "b"):
                caption_says(page, f"#compare-{side}-caption", "reply 1 of 1")
            labels, verdict = plans[driver]
            for label in labels:
                team.rate(label)
            if n == 1:  # c: a reason for the label just given (side B's, the focus having moved on); the
                # panel's caption shows it (tests/test_team.py), once no earlier event's update overtakes it
                team.reason("answers a different question")
            caption_says(page, "#study-status", "has reached its 1 turns")
            page.keyboard.press(verdict)
            caption_says(page, "#compare-status", "On the whole conversation:")
        shot(page, "team-compare")

        # The queue: everyone who shares a conversation rates it there, the third among them; they see no
        # one else's label, and each key brings the next reply.
        page.get_by_role("tab", name="Queue").click()
        co_raters = sorted({p for a in split for p in a.raters if p != a.driver})
        assert third in co_raters
        gave_reason = False
        for who in co_raters:
            team.be(who)
            team.pick("#queue-pick", "team-shared")
            caption_says(page, "#queue-caption", "in queue team-shared")
            while "Nothing left" not in team.caption():
                before = team.caption()
                assert page.locator("#queue-others").inner_text().strip() == ""  # nobody else's label shown
                if who == third and not gave_reason:
                    shot(page, "team-queue")
                team.rate("fail")
                team.next_reply(before)
                if who == third and not gave_reason:
                    team.reason("misses the question")
                    caption_says(page, "#queue-said", "Reason saved")
                    gave_reason = True
        caption_says(page, "#queue-status", "4 of 4 replies with their 2 ratings")

        # Adjudication: cy makes a queue of the study's disagreements, sees both labels, gives the final one.
        team.be("cy")
        page.get_by_text("New queue").click()
        page.fill("#queue-name textarea, #queue-name input", "settle")
        team.pick("#queue-source", "disagree")
        team.pick("#queue-study", "team")
        page.locator("#queue-adjudicate input").check()
        page.click("#queue-create")
        caption_says(page, "#queue-created", "Created queue settle (adjudicate, disagree)")
        caption_says(page, "#queue-caption", "(adjudicate)")
        team.calm()
        settled = 0
        while "Nothing left" not in team.caption():
            before = team.caption()
            assert "People's labels:" in page.locator("#queue-others").inner_text()
            team.rate("pass")
            settled += 1
            team.next_reply(before)
        assert settled >= 1
        shot(page, "team-adjudicate")

        # The report: agreement between people and how many conversations are enough, in the Study tab.
        page.get_by_role("tab", name="Study").click()
        team.pick("#study-pick", "team")
        for said in ("Agreement between raters", "whole-conversation verdicts for 2", "Rated by people, adjudicated"):
            caption_says(page, "#study-report", said)  # the tab's own refresh may still be running: wait for it
        page.wait_for_function("!document.querySelector('#study-report').innerText.includes('processing')")
        text = page.locator("#study-report").inner_text()
        assert "Krippendorff's alpha (ordinal)" in text and "weighted kappa" in text
        assert "How many conversations are enough" in text and "Why replies failed" in text
        assert "whole-conversation verdicts for 2" in text
        needed = page.locator("#study-needed").inner_text()
        assert "dialogue vs zero-shot:" in needed or "zero-shot vs dialogue:" in needed, needed
        shot(page, "team-study", full_page=True)

    # What was stored: one key per rated reply, every label kept beside the final one.
    people = query(
        db,
        "select annotator, count(*) from ratings where current = 1 and annotator not like 'adjudicator/%' group by 1",
    )
    final = query(db, "select count(*) from ratings where current = 1 and annotator = 'adjudicator/cy'")[0][0]
    assert final == settled and sum(n for _, n in people) == 8  # 4 replies, 2 people each
    assert team.rating_keys == sum(n for _, n in people) + final  # keys per rated reply: 1
    assert query(db, "select verdict from conversation_verdicts order by created") == [("a",), ("b",)]
    assert {c for (c,) in query(db, "select comment from ratings where comment is not null")} == {
        "answers a different question",
        "misses the question",
    }
    store = Store(db)
    by: dict[str, dict[str, str]] = {}
    for turn, who, label in store.current_ratings():
        if not who.startswith("adjudicator/"):
            by.setdefault(who, {})[turn] = label
    expected = people_agreement(by, {}).pairs
    store.close()
    assert expected and sum(p.turns for p in expected) == 4  # every reply rated by exactly one pair
    for p in expected:  # the page shows what the store's ratings give
        assert f"{p.a} / {p.b}" in text and f"{100 * p.tie_discounted:.1f}%" in text, text
