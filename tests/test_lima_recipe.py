"""`limachat filter --recipe lima`: every rule of LIMA's section 2.1 on items written to trip it, the
counts per step, the CLI on the bundled Q&A sample, and the selection that export then takes."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from limachat.cli import main
from limachat.curate import lima
from limachat.dialogues import bundled
from limachat.dialogues.formats import FormatError
from limachat.dialogues.store import Store

LONG = "Boil the water first, then add the pasta and stir it well so that nothing sticks. " * 16  # 1,344 chars


def item(answer: str, *, id: str = "q", community: str = "cooking", score: float | None = None, **more) -> dict:
    return {"id": id, "community": community, "title": f"Title {id}?", "body": f"Body of {id}.",
            "answers": [{"body": answer, "score": score}], **more}  # fmt: skip


def counts(records: list[dict], tmp_path, **settings) -> tuple[dict[str, int], lima.Result]:
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = lima.run(lima.read(path), lima.Settings(**settings))
    return {s.name: s.removed for s in result.steps}, result


def test_the_top_voted_answer_of_each_question_and_the_first_without_votes(tmp_path):
    records = [
        {**item(LONG, id="a"), "answers": [{"body": "x " + LONG, "score": 3}, {"body": "y " + LONG, "score": 9}]},
        {**item(LONG, id="b"), "answers": ["first " + LONG, "second " + LONG]},  # no votes: the first listed
        {**item(LONG, id="c"), "answers": [{"body": "p " + LONG, "score": 5}, {"body": "q " + LONG, "score": 5}]},
    ]
    removed, result = counts(records, tmp_path)
    assert removed["top-answer"] == 3
    assert [i.answer.split()[0] for i in result.items] == ["y", "first", "p"]  # a tie: the first among equals
    assert [i.score for i in result.items] == [9, None, 5]


def test_the_length_window_is_lima_s_1200_to_4096_characters_of_cleaned_text(tmp_path):
    exactly = ("a" * 9 + " ") * 120  # 1,200 characters, the trailing space cleaned away: 1,199
    records = [
        item("a" * 1200, id="min"),
        item("a" * 1199, id="short"),
        item("a" * 4096, id="max"),
        item("a" * 4097, id="long"),
        item(exactly, id="trimmed"),
        item("<p>" + "a" * 1195 + "</p>", id="tags"),  # 1,202 with its tags, 1,195 without
    ]
    removed, result = counts(records, tmp_path)
    assert removed["length"] == 4 and [i.id for i in result.items] == ["min", "max"]
    _, wider = counts(records, tmp_path, min_chars=1000, max_chars=5000)
    assert len(wider.items) == 6


def test_first_person_answers_are_dropped_but_code_and_capitalised_words_are_not(tmp_path):
    records = [
        item("I think you should " + LONG, id="i"),
        item(LONG + " That worked for me.", id="me"),
        item("My advice: " + LONG, id="my"),
        item(LONG + " I've seen it often.", id="ive"),
        item(LONG + "\n\n```\nfor i in range(3): my_list.append(i)\nI = 2\n```", id="code"),
        item("Immediately " + LONG + " `I` and Iris and memes.", id="words"),
    ]
    removed, result = counts(records, tmp_path)
    assert removed["first-person"] == 4 and sorted(i.id for i in result.items) == ["code", "words"]
    assert lima.first_person("Me and myself. Mine.") == ["Me", "myself", "Mine"]


def test_answers_that_point_at_other_answers_or_the_site_are_dropped(tmp_path):
    trips = [
        "As mentioned above, " + LONG,
        LONG + " See the other answers for more.",
        LONG + " The accepted answer covers the rest.",
        LONG + " This site has more on that.",
        LONG + " Stack Overflow has a thread on it.",
        LONG + " Please upvote if this helped.",
        "Edit: fixed a typo.\n\n" + LONG,
    ]
    records = [item(t, id=f"r{n}") for n, t in enumerate(trips)] + [item(LONG + " An answer of its own.", id="ok")]
    removed, result = counts(records, tmp_path)
    assert removed["references"] == len(trips) and [i.id for i in result.items] == ["ok"]


def test_cleaning_keeps_code_and_lists_and_drops_images_links_and_html(tmp_path):
    html = (
        "<p>Do this:</p><ol><li>Boil <b>water</b>.</li><li>Add pasta.</li></ol>"
        '<img src="pot.png" alt="a pot"><p>Read <a href="https://example.com/pasta">the guide</a> or '
        "https://example.org/x.</p><pre><code>cook(pasta, minutes=9)\n</code></pre>"
        "<script>alert(1)</script><div class='x'>Serve hot &amp; fresh.</div>"
    )
    text = lima.clean(html)
    assert text == (
        "Do this:\n\n1. Boil **water**.\n2. Add pasta.\n\nRead the guide or\n\n"
        "```\ncook(pasta, minutes=9)\n```\n\nServe hot & fresh."
    )  # the image, both addresses, the script and every tag gone; the link's words kept
    assert "<" not in text and "http" not in text and "pot.png" not in text and "example" not in text
    assert "1. Boil **water**." in text and "2. Add pasta." in text and "```\ncook(pasta, minutes=9)\n```" in text
    assert lima.clean("See [the docs](https://x.y) and ![pic](a.png).") == "See the docs and ."


def test_sampling_per_community_and_title_or_body_at_random_are_seeded(tmp_path):
    records = [item(LONG + f" Variant {n}.", id=f"{c}{n}", community=c) for c in ("cooking", "diy") for n in range(5)]
    records.append(item(LONG, id="solo", community="travel"))
    removed, result = counts(records, tmp_path, per_category=2, seed=1)
    assert removed["per-category"] == 6  # 5 + 5 + 1 down to 2 + 2 + 1
    assert sorted(i.category for i in result.items) == ["cooking", "cooking", "diy", "diy", "travel"]
    again = counts(records, tmp_path, per_category=2, seed=1)[1]
    assert [(i.id, i.prompt_from) for i in again.items] == [(i.id, i.prompt_from) for i in result.items]
    other = counts(records, tmp_path, per_category=2, seed=2)[1]
    assert [i.id for i in other.items] != [i.id for i in result.items]
    for i in result.items:
        assert i.prompt == (i.title if i.prompt_from == "title" else i.body)
    froms = {i.prompt_from for seed in range(6) for i in counts(records, tmp_path, seed=seed)[1].items}
    assert froms == {"title", "body"}
    no_title = counts([{**item(LONG, id="b"), "title": ""}], tmp_path)[1].items[0]
    assert (no_title.prompt_from, no_title.prompt) == ("body", "Body of b.")


def test_conversation_files_count_as_one_question_each_and_multi_turn_ones_are_removed(tmp_path):
    path = tmp_path / "chains.jsonl"
    path.write_text(
        json.dumps({"conversations": ["How do I boil an egg?", LONG], "source": "cooking"}) + "\n"
        + json.dumps({"conversations": ["Hi", "Hello", "How are you?", LONG], "source": "chat"}) + "\n"
    )  # fmt: skip
    result = lima.run(lima.read(path))
    assert {s.name: s.removed for s in result.steps}["single-turn"] == 1
    assert [(i.category, i.prompt) for i in result.items] == [("cooking", "How do I boil an egg?")]


@pytest.mark.parametrize(
    "line, says",
    [
        ("not json", "not valid JSON"),
        ('{"answers": ["x"]}', 'a question needs a "title" or a "body"'),
        ('{"title": "t", "answers": "x"}', '"answers" must be a list'),
        ('{"title": "t", "answers": [{"body": "x", "score": "many"}]}', 'answer 1\'s "score" must be a number'),
        ('{"title": "t", "answers": [7]}', "answer 1 must be a string or an object with a body"),
        ('{"name": "x"}', 'neither a question with "answers" nor a conversation limachat imports'),
    ],
)
def test_bad_lines_say_file_line_and_what(tmp_path, line, says):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps(item(LONG)) + "\n" + line + "\n")
    with pytest.raises(FormatError, match=f"^{path}:2: .*{says[:20]}"):
        lima.read(path)


def test_filter_on_the_bundled_sample_reports_each_step_and_saves_a_selection(clean_env):
    runner = CliRunner()
    qa = str(bundled("qa.jsonl"))
    result = runner.invoke(main, ["--home", "h", "filter", qa, "--recipe", "lima", "--name", "lima-rules"])
    assert result.exit_code == 0, result.output
    rows = [re.match(r"^(\S+) .*? (\d+) +(\d+) +(\d+)(  \(.*\))?$", line) for line in result.output.splitlines()[1:9]]
    # in, removed and left of each step on the bundled 12 questions (16 answers), counted by hand from the file:
    # 4 lower-voted answers; first person in c2 and t1; references in p2 and t2; c3, d2 and p1 too short
    assert {m[1]: tuple(map(int, m.group(2, 3, 4))) for m in rows} == {
        "single-turn": (16, 0, 16),
        "top-answer": (16, 4, 12),
        "clean": (12, 0, 12),
        "first-person": (12, 2, 10),
        "references": (10, 2, 8),
        "length": (8, 3, 5),
        "per-category": (5, 0, 5),
        "prompt": (5, 0, 5),
    }
    assert "selection lima-rules: 5 chains" in result.output
    store = Store(clean_env / "h" / "limachat.db")
    leaves = store.selection("lima-rules")
    assert len(leaves) == 5
    exported = clean_env / "out.jsonl"
    result = runner.invoke(
        main, ["--home", "h", "export", "--format", "messages", "-o", str(exported), "--selection", "lima-rules"]
    )
    assert result.exit_code == 0, result.output
    chains = [json.loads(line) for line in exported.read_text().splitlines()]
    assert len(chains) == 5 and all(1200 <= len(c["messages"][1]["content"]) <= 4096 for c in chains)
    answers = [c["messages"][1]["content"] for c in chains]
    assert not any(tag in a for a in answers for tag in ("<p>", "<li>", "<img", "href", "http"))
    assert any("#include <stdio.h>" in a for a in answers)  # code keeps its angle brackets
    again = runner.invoke(main, ["--home", "h", "filter", qa, "--recipe", "lima", "--name", "lima-rules"])
    assert again.exit_code == 1 and "exists" in again.output and "Traceback" not in again.output
    bad = runner.invoke(main, ["--home", "h", "filter", qa, "--recipe", "lima", "--name", "x", "--min-chars", "5000"])
    assert bad.exit_code == 1 and "--min-chars 5000 is more than --max-chars 4096" in bad.output
