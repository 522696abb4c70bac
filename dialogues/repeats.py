"""Does a reply answer the new question, or give back an earlier reply of its conversation?

The measure: the share of the reply's word trigrams that already occur in the conversation's
earlier assistant turns. A copied reply scores near 1; a reply that follows up on the same topic
shares a few stock phrases ("make sure to", "you can use") and scores low. Calibrated on real
replies of the demo checkpoints and the base on the held-out follow-ups (tests/data/repeats.json):
copies of an earlier reply scored 0.79-1.0, replies that answered the new question 0.0-0.26. In
between (0.3-0.55) sit an email "made more polite" with a sentence changed and a code answer
re-using the previous one's template: half-answers, and the threshold splits them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

N = 3  # words per n-gram: pairs are too common in plain English, 4-grams miss light rewording
REPEAT_AT = 0.5  # a reply with at least this share of its trigrams seen before is a repeat
_WORD = re.compile(r"\w+")


def _grams(text: str) -> list[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return [tuple(words[i : i + N]) for i in range(len(words) - N + 1)]


def repeat_share(reply: str, earlier: Iterable[str]) -> float | None:
    """The share of `reply`'s word trigrams found in the `earlier` replies; None when there is no
    earlier reply or the reply has fewer than three words (nothing to compare)."""
    earlier = [e for e in earlier if e]
    grams = _grams(reply)
    if not earlier or not grams:
        return None
    seen = {g for e in earlier for g in _grams(e)}
    return sum(g in seen for g in grams) / len(grams)


def is_repeat(share: float | None) -> bool:
    return share is not None and share >= REPEAT_AT
