"""Which adapter `limachat serve` serves under each checkpoint name (no server started here)."""

import json

import pytest

from limachat.serve.server import ServerError, find_adapters


def adapter(folder, base_model=None):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    if base_model:
        (folder / "training.json").write_text(json.dumps({"base_model": base_model}))


def test_trained_adapters_for_this_base_are_served(tmp_path):
    adapter(tmp_path / "checkpoints" / "dialogue", "/base/a")
    untrained = tmp_path / "untrained"
    zs, dl = find_adapters(tmp_path, untrained, "/base/a")
    assert (zs.path, zs.trained) == (
        untrained,
        False,
    ) and f"no {tmp_path / 'checkpoints' / 'zero-shot'}" in zs.describe()
    assert (dl.path, dl.trained) == (tmp_path / "checkpoints" / "dialogue", True)


def test_an_adapter_trained_on_another_base_is_not_served(tmp_path):
    adapter(tmp_path / "checkpoints" / "zero-shot", "/base/other")
    zs, _ = find_adapters(tmp_path, tmp_path / "untrained", "/base/a")
    assert not zs.trained and "was trained on /base/other" in zs.describe()


def test_a_full_fine_tune_says_how_to_serve_it(tmp_path):
    full = tmp_path / "checkpoints" / "dialogue"
    full.mkdir(parents=True)
    (full / "config.json").write_text("{}")
    with pytest.raises(ServerError, match=r"full fine-tuned model.*limachat serve --base .*dialogue --port 8001"):
        find_adapters(tmp_path, tmp_path / "untrained", "/base/a")


def test_other_adapters_trained_here_are_served_too(tmp_path):
    """`limachat train --name` and the app's Collect tab write beside the two variants."""
    adapter(tmp_path / "checkpoints" / "dialogue-r2", "/base/a")
    adapter(tmp_path / "checkpoints" / "elsewhere", "/base/other")
    (tmp_path / "checkpoints" / "half-written").mkdir()
    names = [a.name for a in find_adapters(tmp_path, tmp_path / "untrained", "/base/a")]
    assert names == ["zero-shot", "dialogue", "dialogue-r2"]
