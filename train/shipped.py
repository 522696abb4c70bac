"""The demo adapters limachat ships: `limachat train` (and so `limachat demo`) trained on the bundled base
with the bundled data and the default recipe, committed under train/adapters/ with their training record.

A home whose checkpoint would be trained with exactly that fingerprint (the same data, recipe and base)
gets the shipped adapter instead of eight CPU minutes of training; anything else trains as before.
`make adapters` rebuilds them (`limachat train --force` in a scratch home, then `python -m
limachat.train.shipped HOME`), and a test fails when the recipe or the data changed without a rebuild. Only the served epoch ships: `--epoch N` on a shipped checkpoint asks
for `--force`, which trains it here and keeps every epoch."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from limachat.layout import VARIANTS, training_record, write_training_record

SHIPPED = Path(__file__).parent / "adapters"
FILES = ("adapter_model.safetensors", "adapter_config.json", "train_config.json", "training.json")


def shipped(variant: str) -> Path:
    return SHIPPED / variant


def install(variant: str, stamp: str, out_dir: Path, base_model: str) -> bool:
    """Copy the shipped adapter of `variant` to `out_dir` when its fingerprint is `stamp`; False otherwise."""
    record = training_record(shipped(variant))
    if record is None or record.get("fingerprint") != stamp:
        return False
    _copy(shipped(variant), out_dir, base_model, {**record, "base_model": base_model, "shipped": True})
    return True


def ship(home: Path, target: Path = SHIPPED) -> dict[str, dict]:
    """Write the demo checkpoints a home trained (`limachat train --force` on the bundled base) under `target`
    (the shipped ones by default), without the paths of the machine that built them; the held-out losses of
    the adapter each replaces and of the new one."""
    from limachat.serve.base import BUNDLED_NAME

    before = {v: (training_record(target / v) or {}).get("heldout") for v in VARIANTS}
    for variant in VARIANTS:
        record = training_record(home / "checkpoints" / variant)
        record.pop("base_model", None)
        _copy(home / "checkpoints" / variant, target / variant, BUNDLED_NAME, record)
    return {v: {"before": before[v], "after": training_record(target / v)["heldout"]} for v in VARIANTS}


def _copy(source: Path, folder: Path, base_model: str, record: dict) -> None:
    """An adapter's files into `folder` (whole or not at all), naming `base_model` and holding `record`."""
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in FILES:
        shutil.copy2(source / name, tmp / name)
    config = json.loads((tmp / "adapter_config.json").read_text())
    (tmp / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": base_model}, indent=2))
    write_training_record(tmp, record)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


if __name__ == "__main__":  # `make adapters`, after `limachat train --force` in a scratch home
    for variant, losses in ship(Path(sys.argv[1])).items():
        old = losses["before"]["loss"] if losses["before"] else "none"
        print(f"{variant}: held-out loss {losses['after']['loss']} (the adapter it replaced: {old})")
