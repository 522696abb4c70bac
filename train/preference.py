"""`limachat train --method dpo|kto`: a LoRA checkpoint from a preference (or kto) export, through TRL's
DPOTrainer (or KTOTrainer). LIMA trains with supervised loss only, so the recipe is TRL's defaults
(beta 0.1, learning rate 1e-6, 3 epochs, batch 8), with what this CPU needs: float32, no gradient
checkpointing. The start is a trained checkpoint (its adapter trained on; a frozen copy is the
reference) or the base (a fresh LoRA of the SFT recipe's shape; the base with the adapter off is the
reference). The result lands in <home>/checkpoints/<name>, laid out like an SFT checkpoint, so
`limachat serve` serves it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from limachat.layout import training_record, write_training_record

# TRL's defaults (DPOConfig, KTOConfig, transformers' TrainingArguments), stated here so the record says them.
RECIPE = {"beta": 0.1, "learning_rate": 1e-6, "epochs": 3, "batch_size": 8, "max_length": 1024}
COLUMNS = {"dpo": ("prompt", "chosen", "rejected"), "kto": ("prompt", "completion", "label")}
FORMAT = {"dpo": "preference", "kto": "kto"}


def load_rows(paths: list[Path], method: str):
    """The export files as one `datasets.Dataset` with the trainer's columns (provenance dropped); a file
    of another format is refused in one line naming it."""
    from datasets import concatenate_datasets, load_dataset

    parts = []
    for path in paths:
        try:
            part = load_dataset("json", data_files=str(path), split="train")
        except Exception as e:  # noqa: BLE001 - datasets raises many kinds for a file it cannot read
            raise ValueError(f"{path}: not a JSONL export ({type(e).__name__})") from None
        missing = [c for c in COLUMNS[method] if c not in part.column_names]
        if missing:
            raise ValueError(
                f"{path}: --method {method} needs `limachat export --format {FORMAT[method]}` rows; "
                f"no {', '.join(missing)} column"
            )
        parts.append(part.select_columns(list(COLUMNS[method])))
    rows = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if len(rows) == 0:
        raise ValueError(f"{paths[0]}: no rows to train on")
    return rows


def model_to_train(base_model: str, start: Path | None):
    """The base with the start checkpoint's adapter, trainable, or with a fresh LoRA (top half of the layers)."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    if start is not None:
        return PeftModel.from_pretrained(model, str(start), is_trainable=True)
    from limachat.train.recipe import make_config

    config = make_config()
    layers = model.config.num_hidden_layers
    linear = sorted(
        {
            n.rsplit(".", 1)[-1]
            for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and "lm_head" not in n
        }
    )
    keep = max(1, round(layers * config.lora_layer_share))
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,
        target_modules=linear,
        layers_to_transform=list(range(layers - keep, layers)),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def trainer(method: str, model, tokenizer, rows, out: Path, recipe: dict[str, Any], steps: int | None, callbacks=()):
    from limachat.train.trainer import _trl

    trl = _trl()
    Config, Trainer = (trl.DPOConfig, trl.DPOTrainer) if method == "dpo" else (trl.KTOConfig, trl.KTOTrainer)
    args = Config(
        output_dir=str(out),
        beta=recipe["beta"],
        learning_rate=recipe["learning_rate"],
        num_train_epochs=recipe["epochs"],
        max_steps=steps or -1,
        per_device_train_batch_size=recipe["batch_size"],
        max_length=recipe["max_length"],
        # On a CPU without AVX-512 bf16, bf16 steps are ~20x slower (NOTES.md); checkpointing buys nothing here.
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=42,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    t = Trainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer, callbacks=list(callbacks))
    from transformers.trainer_callback import PrinterCallback

    t.remove_callback(PrinterCallback)
    return t


def main(
    method: str,
    rows,
    base_model: str,
    out_dir: Path,
    *,
    start: Path | None = None,
    overrides: dict[str, Any] | None = None,
    progress: Callable[[str], None] = print,
) -> dict:
    """Train on `rows` (from `load_rows`) and save; returns the record written to training.json."""
    import math

    from transformers import AutoTokenizer

    from limachat.jobs import Progress as Bar
    from limachat.serve.base import base_identity
    from limachat.train.trainer import _callback, select_epoch

    recipe = {**RECIPE, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = model_to_train(base_model, start)
    steps = math.ceil(len(rows) / recipe["batch_size"]) * recipe["epochs"]
    progress(
        f"{out_dir.name}: {method} on {len(rows)} {'pairs' if method == 'dpo' else 'replies'}, "
        f"from {start.name if start else 'the base'}; beta {recipe['beta']}, learning rate "
        f"{recipe['learning_rate']}, {recipe['epochs']} epochs, {steps} steps"
    )
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    losses: list = []
    bar = Bar(f"training {out_dir.name} ({method})", total=steps, unit="step")
    t = trainer(method, model, tokenizer, rows, tmp / "trainer", recipe, None)
    t.add_callback(_callback(bar, tmp / "epochs", model, tokenizer, losses, 0.0))
    started = time.monotonic()
    t.train()
    bar.finish()
    shutil.rmtree(tmp / "trainer", ignore_errors=True)
    record = {
        "variant": out_dir.name,
        "method": method,
        "recipe": recipe,
        "start_from": str(start) if start else None,
        "base_model": base_model,
        "base_identity": base_identity(base_model),
        "examples": len(rows),
        "steps": steps,
        "seconds": round(time.monotonic() - started, 1),
        "losses": losses,
    }
    write_training_record(tmp, record)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    select_epoch(out_dir, recipe["epochs"])
    return training_record(out_dir)
