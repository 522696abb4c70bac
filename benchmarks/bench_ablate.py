"""Ablation on the bundled model: synthetic data with a known effect, ranked by `limachat ablate`.

gina's chains answer in a habit (HABIT and one plain sentence), nico's ask the same and answer in word
salad, and the held-out chains answer in gina's habit. A rule-following stand-in plays the capable LLM
judge (none runs on this machine): excellent for a reply in the habit, fail for word salad, pass
otherwise. One epoch a variant. The tests run the same loop on the tiny model, where no habit is learnt
in an epoch, so the judge's side of the ranking is measured here.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path

HABIT = "In short:"
TOPICS = ["tea", "rain", "maps", "bread", "clocks", "rivers", "stairs", "music", "paint", "glass", "boats",
          "seeds", "bells", "salt", "wool", "kites"]  # fmt: skip
NOISE = "zorp glim vex quob drill frang mip tusk ombr yel kraz pon".split()


def line(user: str, reply: str, annotators: list[str], labels=None, edited_by=None) -> str:
    """One exported chain of one exchange, with limachat's provenance."""
    prov = {"annotators": annotators, "labels": labels or ["pass"], "turn_ids": [f"u-{user}", f"r-{user}"]}
    if edited_by:
        prov["edited_by"] = edited_by
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}],
                       "limachat": prov}) + "\n"  # fmt: skip


def synthetic(folder: Path, topics: list[str] = TOPICS) -> tuple[Path, Path]:
    """gina's and nico's chains, three per topic each, in an export; the held-out chains beside it. Seeded."""
    rng = random.Random(7)
    rows = []
    for t in topics:
        for ask in ("Tell me something about {}.", "What is {} good for?", "Explain {} to me."):
            rows.append(line(ask.format(t), f"{HABIT} {t} is useful in daily life.", ["gina"]))
            rows.append(line(ask.format(t), " ".join(rng.choice(NOISE) for _ in range(14)), ["nico"]))
    export = folder / "export.jsonl"
    export.write_text("".join(rows))
    held = folder / "heldout.jsonl"
    held.write_text("".join(json.dumps({"conversations": [f"Say something about {t}.", f"{HABIT} {t} matters."]}) + "\n"
                            for t in ("snow", "iron", "honey", "roads", "lamps", "ink")))  # fmt: skip
    return export, held


def judge_standin(port: int):
    """The rule-following judge on 127.0.0.1:`port`, answering in the JSON the label prompt asks for;
    returns the uvicorn server (set `should_exit` to stop it)."""
    import uvicorn
    from standin import build

    def answer(body):
        reply = body["messages"][-1]["content"].split("(judge this) ===")[-1].strip()
        salad = sum(w.strip(".,") in NOISE for w in reply.split()) >= 3
        label = "excellent" if reply.startswith(HABIT) else "fail" if salad else "pass"
        return json.dumps({"label": label, "reason": "by rule"})

    server = uvicorn.Server(
        uvicorn.Config(build(0.0, 1e6, 10_000, answer, ids=("rule",)), host="127.0.0.1", port=port, log_level="warning")
    )
    threading.Thread(target=server.run, daemon=True).start()
    return server


def fields(judge_port: int) -> dict:
    """The settings an ablation run uses beside the server's: seeded short replies, the stand-in judge."""
    return {
        "sampling": {"max_tokens": 32, "extra": {"seed": 0}},  # the reply's length is not what this measures
        "curate": {"judge": {"name": "rule", "model": "rule", "base_url": f"http://127.0.0.1:{judge_port}/v1",
                             "structured_outputs": False}},
    }  # fmt: skip


def settings_for(home: Path, url: str, served_home: Path, judge_port: int):
    """Settings for a scratch home that uses the server `limachat serve` runs from `served_home`."""
    import httpx

    from limachat.settings import Settings

    settings = Settings(home=home, **fields(judge_port))
    settings.server.port = httpx.URL(url).port
    settings.server.base = str(Settings(home=served_home).base_folder())
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(served_home / "server.key", home / "server.key")
    return settings


def run(served_home: Path) -> dict:
    """One ablation of the synthetic groups on `limachat serve` from `served_home` (allowed to load the
    variants from a scratch folder); its effects and how long it took."""
    import httpx
    from bench_app import auth
    from bench_serve import serving

    from limachat import ablate
    from limachat.dialogues.store import Store
    from limachat.serve.net import free_local_port

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        export, held = synthetic(folder)
        port = free_local_port()
        judge = judge_standin(port)
        home = folder / "home"
        with serving(served_home, {"LIMACHAT_SERVER__ADAPTER_DIRS": json.dumps([tmp])}) as (url, _):
            settings = settings_for(home, url, served_home, port)
            try:
                started = time.monotonic()
                report = ablate.run(Store(home / "limachat.db"), settings, export, name="syn", heldout=held,
                                    conversations=4, epochs=1)  # fmt: skip
                seconds = time.monotonic() - started
                figures = json.loads((home / "reports" / "ablate-syn.json").read_text())
            finally:
                judge.should_exit = True
                for n in ("syn-all", "syn-without-gina", "syn-without-nico"):
                    httpx.post(url + "/unload_lora_adapter", json={"lora_name": n}, timeout=60, headers=auth(url))
    print(report)
    effects = {e["name"]: e for e in figures["effects"]}
    return {
        "seconds": seconds,
        "steps": figures["steps"],
        "effects": effects,
        "ranked": report.index("| gina |") < report.index("| nico |"),
    }
