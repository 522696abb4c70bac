"""Preference data from what a `make demo` user does in the app, on the real server, into TRL: a blind
compare with verdicts, a regenerated reply, ratings and a gold edit become pairs and labels, DPOTrainer
and KTOTrainer each take a step on the exports, and `limachat train --method dpo` makes a checkpoint the
running server serves."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from conftest import models
from test_curation import drain

from limachat.cli import main
from limachat.demo import chat, compare
from limachat.demo.answer import Deps
from limachat.dialogues.dataset import Output, write_jsonl
from limachat.dialogues.export import Filters
from limachat.dialogues.store import Store
from limachat.settings import Settings


@pytest.fixture(scope="module")
def demo_user(vllm_server, tmp_path_factory):
    """Through the app's handlers: a blind compare of two exchanges with a verdict on each, and a chat whose
    reply was failed, regenerated, the new one rated excellent and then corrected. Replies are capped at 64
    tokens and seeded (their length is not what this checks)."""
    home = tmp_path_factory.mktemp("prefs")
    settings = Settings(home=home, sampling={"max_tokens": 64, "extra": {"seed": 0}})
    cks = {n: vllm_server.checkpoint(n) for n in ("zero-shot", "dialogue")}
    deps = Deps(Store(home / "limachat.db"), cks, settings)
    state = compare.blank()
    for text, choice in (("How do I boil an egg?", "b"), ("And a soft one?", "a")):
        state = drain(compare.send(deps, state, text, "zero-shot", "dialogue", True, "ana"))[-1][0]
        compare.verdict(deps, state, choice, "ana")
    state, _ = drain(chat.send(deps, chat.blank(), "Name three rivers.", "dialogue", "ana"))[-1]
    chat.rate(deps, state, 1, "Fail", "ana")
    other_draw = Deps(deps.store, cks, Settings(home=home, sampling={"max_tokens": 64, "extra": {"seed": 1}}))
    state, _ = drain(chat.regenerate(other_draw, state, 1, "dialogue", "ana"))[-1]  # a new draw, as a user gets
    chat.rate(deps, state, 1, "Excellent", "ana")
    drain(chat.edit(deps, state, 1, "The Nile, the Amazon and the Danube.", "dialogue", "ana"))
    yield deps, home
    deps.store.close()


def test_the_demo_users_pairs_by_source(demo_user):
    deps, home = demo_user
    out = Output(deps.store, "preference", Filters())
    rows = write_jsonl(out, home / "pairs.jsonl")
    assert out.tally.pairs == {"verdict": 1, "edit": 1, "label": 1}, out.summary()
    assert out.tally.skipped == {"verdicts on sides with different histories": 1}  # the second exchange
    verdict = rows[0]
    assert verdict["prompt"] == [{"role": "user", "content": "How do I boil an egg?"}]
    chosen = deps.store.turn(verdict["limachat"]["chosen_turn"])
    assert verdict["limachat"]["mode"] == "blind" and chosen["lane"] == "b"  # the side picked, whichever it hid
    assert verdict["limachat"]["checkpoints"]["chosen"] == chosen["checkpoint"]
    assert rows[1]["chosen"] == [{"role": "assistant", "content": "The Nile, the Amazon and the Danube."}]
    assert rows[2]["limachat"]["labels"] == {"chosen": "excellent", "rejected": "fail"}
    kto = Output(deps.store, "kto", Filters())
    assert [r["label"] for r in write_jsonl(kto, home / "kto.jsonl")] == [False, True]


def test_the_collect_tab_counts_pairs_by_source_and_writes_them(demo_user):
    """The tab's defaults (min label pass, gold corrections on) shape chains; pairs ignore them and say so."""
    from datasets import load_dataset

    from limachat.demo import collect

    deps, _ = demo_user
    f = collect.filters("pass", prefer_gold=True)
    counted = collect.count(deps, f)
    assert "**3** preference pairs: 1 from verdicts, 1 from edits, 1 from labels" in counted, counted
    assert "**2** KTO replies: 1 good, 1 bad (pass replies left out" in counted, counted
    path, message = collect.export_file(deps, f, "preference")
    assert len(path.read_text().splitlines()) == 3 and message.startswith("Wrote 3 pairs")
    folder, message = collect.hub_folder(deps, f, "preference", license="cc-by-4.0")
    assert "as the `preference` config of" in message and "(configs: preference)" in message, message
    _, message = collect.hub_folder(deps, f, "kto", pass_is_good=True)
    assert "(configs: preference, kto)" in message, message
    assert len(load_dataset(str(folder), "preference", split="train")) == 3
    assert "license: cc-by-4.0" in (folder / "README.md").read_text()


def test_dpo_and_kto_trainers_each_take_a_step_on_the_exports(demo_user, tiny_base):
    """One optimizer step of each, on the bundled base, float32 on CPU, a fresh LoRA: at the start the
    policy is its reference (DPO's loss is ln 2, KTO's 0.5), and after one step DPO's reward margin on
    the same pairs is positive. The learning rate is raised (not what this checks) so one step shows."""
    from datasets import load_dataset
    from transformers import AutoTokenizer

    from limachat.train.preference import RECIPE, load_rows, model_to_train, trainer

    _, home = demo_user
    base = str(tiny_base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    for method, name in (("dpo", "pairs.jsonl"), ("kto", "kto.jsonl")):
        assert set(load_dataset("json", data_files=str(home / name), split="train").column_names) >= {"prompt"}
        rows = load_rows([home / name], method)
        model = model_to_train(base, None)
        recipe = {**RECIPE, "learning_rate": 5e-3, "batch_size": len(rows)}
        t = trainer(method, model, tokenizer, rows, home / f"out-{method}", recipe, 2 if method == "dpo" else 1)
        t.train()
        logs = [entry for entry in t.state.log_history if "loss" in entry]
        assert math.isclose(logs[0]["loss"], math.log(2) if method == "dpo" else 0.5, rel_tol=1e-4), logs
        if method == "dpo":
            assert logs[1]["rewards/margins"] > 0, logs


def test_train_method_dpo_makes_a_checkpoint_the_server_serves(demo_user, vllm_server, tmp_path, monkeypatch):
    """`limachat train --method dpo --data FILE` at the recipe's defaults, from the trained dialogue
    checkpoint, then the running server loads it and answers with it."""
    from limachat.serve.server import load_adapter

    _, home = demo_user
    user_home = tmp_path / "home"
    shutil.copytree(vllm_server.home / "checkpoints" / "dialogue", user_home / "checkpoints" / "dialogue")
    monkeypatch.setenv("LIMACHAT_HOME", str(user_home))
    base = vllm_server.base
    args = ["train", "--method", "dpo", "--data", str(home / "pairs.jsonl"), "--name", "dialogue-dpo", "--base", base]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "dialogue-dpo: dpo on 3 pairs, from dialogue; beta 0.1, learning rate 1e-06, 3 epochs, 3 steps" in (
        result.output
    )
    folder = user_home / "checkpoints" / "dialogue-dpo"
    assert (folder / "adapter_model.safetensors").is_file() and not (folder / "ref").exists()
    try:
        load_adapter(vllm_server.url, "dialogue-dpo", folder, vllm_server.key)
        assert "dialogue-dpo" in models(vllm_server.url, vllm_server.headers)
        r = httpx.post(
            vllm_server.url + "/chat/completions",
            headers=vllm_server.headers,
            json={
                "model": "dialogue-dpo",
                "messages": [{"role": "user", "content": "Name a colour."}],
                "max_tokens": 16,
            },
            timeout=120,
        )
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].strip(), r.text
    finally:
        httpx.post(
            vllm_server.url + "/unload_lora_adapter",
            headers=vllm_server.headers,
            json={"lora_name": "dialogue-dpo"},
            timeout=60,
        )


@pytest.mark.parametrize(
    "args, line",
    [
        (["--method", "dpo"], "--method dpo needs --data FILE: a `limachat export --format preference` file"),
        (["--method", "kto", "--data", "x.jsonl", "--from-db"], "--method kto trains on --data exports only"),
        (["--beta", "0.2"], "--beta and --start-from go with --method dpo or kto"),
        (["--method", "dpo", "--data", "x.jsonl", "--start-from", "nope"], "--start-from nope: no trained adapter"),
        (
            ["--method", "dpo", "--data", "x.jsonl", "--start-from", "base"],
            "x.jsonl: --method dpo needs `limachat export --format preference` rows; no prompt, chosen, rejected column",
        ),
    ],
)
def test_bad_preference_training_options_are_one_line(args, line, clean_env):
    Path("x.jsonl").write_text('{"messages": []}\n')
    result = CliRunner().invoke(main, ["train", *args])
    assert result.exit_code != 0 and line in result.output and "Traceback" not in result.output, result.output
