"""Follow-ups on the held-out conversations (dialogues/data/followups.jsonl): per checkpoint and
scope of LIMA's penalty, how many follow-up replies give back an earlier reply, median fluency,
stop rate and reply length, all in one run against a running `limachat serve`.

    python benchmarks/bench_followups.py --url http://127.0.0.1:8000/v1
"""

from __future__ import annotations

import argparse
import asyncio

from bench_app import key

from limachat import followups
from limachat.dialogues.repeats import REPEAT_AT
from limachat.layout import BASE_NAME, VARIANTS
from limachat.settings import Settings

CHECKPOINTS = (BASE_NAME, *VARIANTS)
SCOPES = ("reply", "conversation")
PENALTIES = (1.2, 1.1)  # LIMA's, and the bundled model's default (`focused`)
HEADER = [
    "| checkpoint | penalty, scope | follow-ups repeated | worst repeat share | replies stopped | "
    "fluency, median (max) | tokens, median |",
    "|---|---|---:|---:|---:|---:|---:|",
]


def runs(settings: Settings, seed: int) -> dict[str, tuple[str, dict]]:
    """Every checkpoint at the default preset, with each penalty in each scope."""
    out = {}
    for checkpoint in CHECKPOINTS:
        _, params = settings.sampling_for(checkpoint if checkpoint != BASE_NAME else None)
        for penalty in PENALTIES:
            for scope in SCOPES:
                out[f"{checkpoint}|{penalty}, {scope}"] = (
                    checkpoint,
                    {**params, "generated_repetition_penalty": penalty, "penalty_scope": scope, "seed": seed},
                )
    return out


def measure(url: str, seed: int = 7, dump: str | None = None) -> tuple[str, list[str]]:
    settings = Settings()
    preset = settings.preset_name()
    results = {}
    every = runs(settings, seed)
    for penalty in PENALTIES:  # one batch per penalty: 60 conversations at once fit this CPU's KV cache
        batch = {k: v for k, v in every.items() if v[1]["generated_repetition_penalty"] == penalty}
        results.update(asyncio.run(followups.run(url, batch, api_key=key(url))))
    if dump:  # every reply, to read (or to keep as a fixture)
        import dataclasses
        import json

        with open(dump, "w") as f:
            json.dump({k: [dataclasses.asdict(r) for r in v] for k, v in results.items()}, f, indent=1)
    rows = []
    for name, replies in results.items():
        checkpoint, scope = name.split("|")
        s = followups.summary(replies)
        worst = f"{s['worst']:.2f}" if s["worst"] is not None else "-"
        scores = [r.fluency for r in replies if r.fluency is not None]
        fluency = f"{s['fluency']:.2f} ({max(scores):.2f})" if scores else "-"
        rows.append(
            f"| {checkpoint} | {scope} | {s['repeats']} of {s['followups']} | {worst} | "
            f"{s['stopped']} of {s['replies']} | {fluency} | {s['tokens']:.0f} |"
        )
        print(rows[-1], flush=True)
    return preset, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--dump", help="write every reply to this JSON file")
    args = ap.parse_args()
    preset, rows = measure(args.url, args.seed, args.dump)
    print(
        f"preset {preset} (its penalty and scope as listed), a repeat: {REPEAT_AT:.0%} or more of a reply's word trigrams seen before"
    )
    print("\n".join(HEADER + rows))


if __name__ == "__main__":
    main()
