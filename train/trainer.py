"""`main(config, examples, base_model, out_dir)`: a thin layer over TRL's SFTTrainer, shaped like
TRL's scripts/sft.py. Output, picked up by `limachat serve`:

    <home>/checkpoints/<variant>/
        adapter_config.json, adapter_model.safetensors   the served epoch (LoRA), or the full model
        epochs/epoch-<N>/                                  one checkpoint per epoch
        train_config.json                                  the resolved TrainConfig
        training.json                                      counts, tokens, data hash, losses, served epoch
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from limachat.layout import training_record, write_training_record
from limachat.train.data import IGNORE, Example, data_hash, heldout_examples, tokenize
from limachat.train.recipe import TrainConfig, top_dropout

EOT = "<|end_of_turn|>"
# Used only for a base without a chat template: LIMA's end-of-turn token ends every turn.
# The generation prompt stops before the space, so the prompt's tokens are a prefix of the reply's.
EOT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}" + EOT + "\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

Progress = Callable[[str], None]


@dataclass
class Plan:
    variant: str
    examples: int
    chains: int
    tokens: int  # after trimming
    trimmed: int
    steps: int
    data_hash: str

    def line(self) -> str:
        return (
            f"{self.variant}: {self.examples} examples ({self.chains} multi-turn), {self.tokens:,} tokens, "
            f"{self.trimmed} trimmed to max length, {self.steps} optimizer steps"
        )


def ensure_chat_template(tokenizer) -> bool:
    """Give a template-less base LIMA's end-of-turn token and a plain template; True if added."""
    if tokenizer.chat_template:
        return False
    tokenizer.add_special_tokens({"additional_special_tokens": [EOT]})
    tokenizer.chat_template = EOT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or EOT
    return True


def world() -> tuple[int, int]:
    """(this process's rank, the number of processes) of a data-parallel run: torchrun and `accelerate
    launch` say so in RANK and WORLD_SIZE; a plain run is (0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def accumulation(config: TrainConfig, processes: int) -> int:
    """Gradient accumulation steps that keep the effective batch: batch = per-device × processes × this."""
    per_device = min(config.micro_batch_size, config.batch_size)
    if config.batch_size % (per_device * processes):
        raise ValueError(
            f"batch size {config.batch_size} is not {per_device} per device × {processes} processes × a whole number "
            "of accumulation steps: change --batch-size, --micro-batch-size or --processes"
        )
    return config.batch_size // (per_device * processes)


def batch_line(config: TrainConfig, processes: int) -> str:
    per_device = min(config.micro_batch_size, config.batch_size)
    return (
        f"{config.variant}: effective batch {config.batch_size} = {per_device} per device × {processes} "
        f"process{'es' if processes > 1 else ''} × {accumulation(config, processes)} accumulation steps"
    )


def prepare(config: TrainConfig, examples: list[Example], tokenizer) -> tuple[Plan, list[dict]]:
    rows = [tokenize(ex, tokenizer, config.max_length) for ex in examples]
    rows = [r for r in rows if any(label != IGNORE for label in r["labels"])]  # fully trimmed away: nothing to learn
    plan = Plan(
        config.variant,
        len(rows),
        sum(ex.multi_turn for ex in examples),
        sum(len(r["input_ids"]) for r in rows),
        sum(r["trimmed"] for r in rows),
        config.max_steps or math.ceil(len(rows) / config.batch_size) * config.epochs,  # max_steps wins, as in HF
        data_hash(examples),
    )
    return plan, [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]


def _device() -> tuple[str, object]:
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    # float32 on CPU: bf16 matmuls are ~20x slower without AVX-512 bf16 (measured, see NOTES.md).
    return "cpu", torch.float32


def load_model(base_model: str, config: TrainConfig, tokenizer, added_eot: bool):
    import torch
    from transformers import AutoModelForCausalLM

    device, dtype = _device()
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    if added_eot:
        model.resize_token_embeddings(len(tokenizer))
    params = sum(p.numel() for p in model.parameters())
    # Seeded before PEFT draws LoRA's A matrices: unseeded, every run (and every process of a data-parallel
    # run, until DDP copies rank 0's) started from other weights, so no two trainings matched.
    torch.manual_seed(config.seed)
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = dict(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        layers = model.config.num_hidden_layers
        if config.lora_layer_share < 1.0:  # PEFT takes a layer list only with named modules: every linear but the head
            lora["target_modules"] = sorted(
                {
                    name.rsplit(".", 1)[-1]
                    for name, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear) and "lm_head" not in name
                }
            )
            lora["layers_to_transform"] = list(range(layers - max(1, round(layers * config.lora_layer_share)), layers))
        if added_eot:  # the new token's embedding row is trained too (PEFT trainable tokens)
            lora["trainable_token_indices"] = {"embed_tokens": [tokenizer.convert_tokens_to_ids(EOT)]}
        model = get_peft_model(model, LoraConfig(**lora))
    rates = None
    if config.residual_dropout_on:
        from limachat.train.dropout import add_residual_dropout

        rates = add_residual_dropout(model, top_dropout(config, params))
    torch.manual_seed(config.seed)
    return model.to(device), rates


def time_forward_backward(model, rows: list[dict], pad_id: int, repeats: int = 1) -> list[float]:
    """Seconds per forward+backward of `rows` as one padded batch, after one warm-up pass; the
    gradients are thrown away, so no weight changes. The dry-run estimate and `make bench` use it."""
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    pad = [width - len(r["input_ids"]) for r in rows]
    device = next(model.parameters()).device
    ids = torch.tensor([r["input_ids"] + [pad_id] * n for r, n in zip(rows, pad)], device=device)
    labels = torch.tensor([r["labels"] + [IGNORE] * n for r, n in zip(rows, pad)], device=device)
    mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * n for r, n in zip(rows, pad)], device=device)
    model.train()
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    return times[1:]


HELDOUT_FROM = 2  # LIMA's question: does the checkpoint hold up *after* the first exchange?


def chain_losses(model, tokenizer, examples: list[Example], from_exchange: int = 1) -> list[tuple[float, int]]:
    """Per example: the summed NLL of its assistant tokens from exchange `from_exchange` on, and their count
    (whole chains, no trimming): the held-out loss, and its interval over chains, are built from these."""
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for ex in examples:
            r = tokenize(ex, tokenizer, 1 << 30, first_exchange=from_exchange)
            n = sum(label != IGNORE for label in r["labels"][1:])
            loss = 0.0
            if n:
                o = model(
                    input_ids=torch.tensor([r["input_ids"]], device=device),
                    labels=torch.tensor([r["labels"]], device=device),
                )
                loss = float(o.loss) * n
            out.append((loss, n))
    return out


def heldout_loss(model, tokenizer, examples: list[Example] | None = None) -> dict:
    """Mean NLL per token of the held-out chains' assistant replies at turn 2 and later (whole
    chains, no trimming), for the model and, for a LoRA model, its base with the adapter off."""
    import contextlib

    examples = heldout_examples() if examples is None else examples

    def nll(ctx) -> tuple[float, int]:
        with ctx:
            per = chain_losses(model, tokenizer, examples, HELDOUT_FROM)
        count = sum(n for _, n in per)
        return sum(x for x, _ in per) / max(count, 1), count

    was_training = model.training
    model.eval()
    loss, tokens = nll(contextlib.nullcontext())
    record = {"loss": round(loss, 4), "tokens": tokens, "chains": len(examples), "from_exchange": HELDOUT_FROM}
    if hasattr(model, "disable_adapter"):
        record["base_loss"] = round(nll(model.disable_adapter())[0], 4)
    model.train(was_training)
    return record


def adapter_losses(base_model: str, adapter: Path, examples: list[Example]) -> list[tuple[float, int]]:
    """`chain_losses` of a saved LoRA adapter on its base (every reply counted), in float32 on the CPU."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:  # an end-of-turn token added in training
        model.resize_token_embeddings(len(tokenizer))
    model = PeftModel.from_pretrained(model, str(adapter)).eval()
    return chain_losses(model, tokenizer, examples, 1)


def _trl():
    """TRL, imported without what its import does to this process: `trl/_compat.py` sets
    VLLM_LOGGING_LEVEL=ERROR in os.environ, and `limachat demo` starts vLLM from the same process after
    training, so vLLM's log would keep only errors (the plugin's warnings among what it lost)."""
    import os

    before = os.environ.get("VLLM_LOGGING_LEVEL")
    try:
        import trl
    finally:
        if before is None:
            os.environ.pop("VLLM_LOGGING_LEVEL", None)
        else:
            os.environ["VLLM_LOGGING_LEVEL"] = before
    return trl


def sft_args(config: TrainConfig, output_dir: Path):
    """TRL's settings for this run, on every process of a data-parallel one (torch.distributed: gloo on CPU,
    NCCL on GPUs, which transformers picks); each process takes its share of every batch."""
    SFTConfig = _trl().SFTConfig

    device, _ = _device()
    return SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=min(config.micro_batch_size, config.batch_size),
        gradient_accumulation_steps=accumulation(config, world()[1]),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        learning_rate=config.learning_rate,
        # Linear decay from learning_rate to final_learning_rate (LIMA: 1e-5 -> 1e-6).
        lr_scheduler_type="polynomial",
        lr_scheduler_kwargs={"lr_end": config.final_learning_rate, "power": 1.0},
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        adam_beta1=config.adam_beta1,
        adam_beta2=config.adam_beta2,
        optim="adamw_torch",
        max_length=config.max_length,
        # TRL turns on bf16 and gradient checkpointing by default; on a CPU without AVX-512 bf16
        # that made a step 20x slower, and checkpointing recomputes the forward pass for nothing here.
        bf16=device == "cuda",
        gradient_checkpointing=False,
        use_cpu=device == "cpu",
        ddp_find_unused_parameters=False,  # every trainable weight is used: no extra pass over the graph
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=config.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def _callback(progress_bar, epochs_dir: Path, model, tokenizer, losses: list, tokens_per_step: float):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """A progress bar with loss, tokens/s and ETA, and a checkpoint at every epoch's end."""

        def __init__(self):
            self.start = None
            self.postfix: dict = {}

        def on_train_begin(self, args, state, control, **kw):
            self.start = time.monotonic()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append((state.global_step, round(float(logs["loss"]), 4)))
                elapsed = time.monotonic() - self.start
                self.postfix = {"loss": round(float(logs["loss"]), 3)}
                if tokens_per_step:
                    self.postfix["tok_s"] = round(state.global_step * tokens_per_step / elapsed)

        def on_step_end(self, args, state, control, **kw):
            progress_bar.update(1, **self.postfix)

        def on_epoch_end(self, args, state, control, **kw):
            if not state.is_world_process_zero:  # one process writes the checkpoint
                return
            # a whole epoch, or the one --max-steps stopped in
            epoch = round(state.epoch) if abs(state.epoch - round(state.epoch)) < 1e-6 else math.ceil(state.epoch)
            target = epochs_dir / f"epoch-{epoch}"
            model.save_pretrained(target)
            tokenizer.save_pretrained(target)

    return Progress()


def trainer_class():
    from transformers import Trainer

    SFTTrainer = _trl().SFTTrainer

    class LimaSFTTrainer(SFTTrainer):
        """SFTTrainer with the model's own loss. TRL's fused LM head also works out entropy and top-1
        accuracy for its logs, in tiles recomputed in the backward pass: on this 2-core CPU that was
        37% of every step (profiled: 80 tokens/s against 127 for the same forward+backward)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return LimaSFTTrainer


def main(
    config: TrainConfig,
    examples: list[Example],
    base_model: str,
    out_dir: Path,
    progress: Progress = print,
    serve_epoch: int | None = None,
    fingerprint: str | None = None,
) -> dict:
    """Train one variant; returns the record written to training.json. The progress bar's record is the
    Collect tab's view of the run (limachat.jobs). In a data-parallel run every process trains and the
    first (rank 0) alone shows progress and writes the checkpoint; the others return None."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from limachat.jobs import Progress as Bar

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    added_eot = ensure_chat_template(tokenizer)
    plan, rows = prepare(config, examples, tokenizer)
    rank, processes = world()
    lead = rank == 0
    if not lead:
        progress = _quiet
    progress(plan.line())
    progress(batch_line(config, processes))
    if not rows:
        raise ValueError(f"{config.variant}: no examples to train on")
    model, rates = load_model(base_model, config, tokenizer, added_eot)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    if lead:
        shutil.rmtree(tmp, ignore_errors=True)
    epochs_dir = tmp / "epochs"
    losses: list = []
    tokens_per_step = plan.tokens / math.ceil(len(rows) / config.batch_size)  # an epoch's tokens over its steps
    bar = Bar(f"training {config.variant}", total=plan.steps, unit="step") if lead else _Silent()
    trainer = trainer_class()(
        model=model,
        args=sft_args(config, tmp / "trainer"),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[_callback(bar, epochs_dir, model, tokenizer, losses, tokens_per_step)],
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our bar shows the loss; no raw log dicts on the console
    started = time.monotonic()
    trainer.train()
    bar.finish()
    if not lead:
        return None
    seconds = time.monotonic() - started
    shutil.rmtree(tmp / "trainer", ignore_errors=True)
    heldout = {**heldout_loss(model, tokenizer), "epoch": config.epochs}  # the model after the last epoch
    progress(
        f"{config.variant}: held-out loss (replies from turn {HELDOUT_FROM} on, {heldout['chains']} chains, "
        f"{heldout['tokens']} tokens) {heldout['loss']:.3f}"
        + (f" (base {heldout['base_loss']:.3f})" if "base_loss" in heldout else "")
    )
    from limachat.serve.base import base_identity

    record = {
        "variant": config.variant,
        "base_model": base_model,
        "base_identity": base_identity(base_model),
        **asdict(plan),
        "seconds": round(seconds, 1),
        "tokens_per_second": round(tokens_per_step * plan.steps / seconds, 1),
        "losses": losses,
        "residual_dropout": rates,
        "end_of_turn_token": EOT if added_eot else None,
        "fingerprint": fingerprint,
        "heldout": heldout,
        "processes": processes,
        "per_device_batch": min(config.micro_batch_size, config.batch_size),
        "accumulation_steps": accumulation(config, processes),
    }
    (tmp / "train_config.json").write_text(config.model_dump_json(indent=1) + "\n")
    write_training_record(tmp, record)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    last = max(int(p.name.removeprefix("epoch-")) for p in (out_dir / "epochs").glob("epoch-*"))
    select_epoch(out_dir, serve_epoch or last)
    return training_record(out_dir)


def _quiet(message: str) -> None:
    pass


class _Silent:
    """The progress bar of a process that is not rank 0: rank 0 shows the run."""

    def update(self, n: int = 1, **postfix) -> None:
        pass

    def finish(self, *args, **kwargs) -> None:
        pass


def select_epoch(out_dir: Path, epoch: int) -> None:
    """Serve epoch N: copy its files to the top of the checkpoint folder (LIMA chose one by hand)."""
    source = out_dir / "epochs" / f"epoch-{epoch}"
    if not source.is_dir():
        if (training_record(out_dir) or {}).get("shipped"):
            raise ValueError(
                f"--epoch {epoch}: {out_dir} is the adapter limachat ships, which keeps its last epoch only; "
                "add --force to train it here with every epoch"
            )
        have = sorted(p.name for p in (out_dir / "epochs").glob("epoch-*"))
        raise ValueError(f"--epoch {epoch}: {out_dir} has {', '.join(have) or 'no epochs'}")
    for f in source.iterdir():
        if f.is_file():
            shutil.copy2(f, out_dir / f.name)
    record = training_record(out_dir)
    record["served_epoch"] = epoch
    write_training_record(out_dir, record)
