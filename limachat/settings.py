"""Typed settings: defaults < limachat.toml < LIMACHAT_* environment < explicit overrides.

Every section forbids unknown keys, so a typo is an error that names the key and where it came
from (`limachat.toml:7: sampling.temprature: unknown key`).
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from limachat.layout import VARIANTS, Home
from limachat.serve.checkpoints import Checkpoint
from limachat.serve.net import url_host
from limachat.serve.plugin_env import ENABLE as PLUGIN_ENABLE
from limachat.serve.plugin_env import RANGE_OVERRIDE as PLUGIN_RANGE

ENV_PREFIX = "LIMACHAT_"
CONFIG_FILE = "limachat.toml"


class SettingsError(Exception):
    """A bad configuration value: the message is one line naming the key and its source."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Preset(_Section):
    """A named set of sampling parameters. A key left out (None) is not sent: the endpoint's own
    default applies."""

    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)
    # vLLM's and Hugging Face's penalty: every token of the prompt *and* the output so far.
    repetition_penalty: float | None = Field(None, gt=0.0)
    # LIMA's penalty: only the tokens this reply generated (limachat.serve.vllm_ext, local server only).
    generated_repetition_penalty: float | None = Field(None, gt=0.0)
    # What LIMA's penalty counts as generated: this reply's tokens (`reply`), or also those of the
    # conversation's earlier assistant turns (`conversation`), never the user's or system's text.
    penalty_scope: Literal["reply", "conversation"] | None = None
    max_tokens: int | None = Field(None, ge=1)
    extra: dict[str, Any] = {}  # more request fields, sent unchanged (e.g. seed, stop, min_tokens)

    def request(self) -> dict[str, Any]:
        """The fields this preset sets, as request fields."""
        return {**self.model_dump(exclude={"extra"}, exclude_none=True), **self.extra}


# LIMA (Zhou et al., 2023, section 2): nucleus p = 0.9, temperature 0.7, and a repetition penalty of
# 1.2 on previously generated tokens; in a conversation the model generated its earlier replies too
# (`penalty_scope = "conversation"`: on the held-out follow-ups the reply-only scope let the demo
# checkpoints give back their previous reply, benchmarks/bench_followups.py).
LIMA = Preset(temperature=0.7, top_p=0.9, generated_repetition_penalty=1.2, penalty_scope="conversation")
# For small models: a lower temperature (at 0.7 the bundled 135M model's replies run on and drift; at
# 0.3 they stay on topic, benchmarks/bench_presets.py) and the conversation-wide penalty at 1.1 (at
# 1.2 over the whole conversation its later replies drift off topic; at 1.1 none repeats and they
# read as fluently as with the reply-only scope, benchmarks/bench_followups.py).
FOCUSED = Preset(temperature=0.3, top_p=0.9, generated_repetition_penalty=1.1, penalty_scope="conversation")
BUILTIN = {"lima": LIMA, "focused": FOCUSED}
BUILTIN_PRESETS = (*BUILTIN, "model")  # `model`: the base's own generation_config.json
BUNDLED_PRESET = "focused"  # the bundled SmolLM2-135M-Instruct's default, chosen by measurement
MAX_TOKENS = 512


class Sampling(Preset):
    """Which preset each checkpoint samples with, plus overrides: a key set here (e.g.
    `sampling.temperature`) wins over every preset."""

    preset: str | None = None  # default for every checkpoint; None: BUNDLED_PRESET for the bundled base, else lima
    presets: dict[str, Preset] = {}  # your own, by name: [sampling.presets.NAME]

    @field_validator("presets")
    @classmethod
    def _not_builtin(cls, value: dict[str, Preset]) -> dict[str, Preset]:
        taken = sorted(set(value) & set(BUILTIN_PRESETS))
        if taken:
            raise ValueError(f"{taken[0]!r} is a built-in preset; give yours another name")
        return value

    def overrides(self) -> dict[str, Any]:
        return {**self.model_dump(exclude={"extra", "preset", "presets"}, exclude_none=True), **self.extra}


class Server(_Section):
    """The local vLLM server that `limachat serve` starts."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    base: str | None = None  # Hugging Face id or local folder; None = the bundled SmolLM2-135M
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: str | None = None  # None: float32 on CPU (bf16 is broken without AVX-512), bfloat16 on GPU
    # None: compiled; on CPU (one rank) a configuration's first start on a machine serves uncompiled at once
    # and compiles in the background for the next (serve/precompile.py). True: never compile; False: compile
    # before serving, on the first start too.
    enforce_eager: bool | None = None
    max_model_len: int = Field(2048, ge=128)
    max_lora_rank: int = Field(8, ge=1)
    kv_cache_gib: int = Field(1, ge=1)  # VLLM_CPU_KVCACHE_SPACE on CPU (whole GiB)
    start_timeout: float = Field(900.0, gt=0)  # seconds to wait for /v1/models
    extra_args: list[str] = []  # passed to vLLM as they are
    # vLLM across ranks (docs/serving.md, "Beyond one device"): replicas, layer stages, tensor shards.
    # On CPU each rank is bound to its own share of the cores (VLLM_CPU_OMP_THREADS_BIND).
    data_parallel: int = Field(1, ge=1)
    pipeline_parallel: int = Field(1, ge=1)
    tensor_parallel: int = Field(1, ge=1)
    # Adapters load at run time (CITING rounds, the app's "serve it") only from <home>/checkpoints and these.
    adapter_dirs: list[Path] = []


class App(_Section):
    host: str = "127.0.0.1"
    port: int = Field(7860, ge=1, le=65535)


class Curate(_Section):
    """The machines that curate collected chains: a judge (AlpaGasus, MT-Bench), a teacher (CITING) and
    the embedding model of `limachat select` (LTD). Endpoints are configured like checkpoints; the
    default is the local server's `base`."""

    judge: Checkpoint = Checkpoint(name="judge", model="base")
    teacher: Checkpoint = Checkpoint(name="teacher", model="base")
    concurrency: int = Field(8, ge=1, le=256)  # requests in flight at once
    judge_max_tokens: int = Field(256, ge=16)
    teacher_max_tokens: int = Field(512, ge=16)
    embedding_model: Path | None = None  # a local sentence-transformers folder; None = the bundled all-MiniLM-L6-v2
    embedding_max_tokens: int = Field(64, ge=8, le=512)  # word pieces of a chain embedded, shared by its turns


def _default_checkpoints() -> list[Checkpoint]:
    return [Checkpoint(name=v, model=v) for v in VARIANTS]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    home: Path = Path("data")
    db: Path | None = None  # default: <home>/limachat.db
    db_busy_timeout: float = Field(10.0, gt=0)  # seconds a write waits for another process's lock
    checkpoints: list[Checkpoint] = Field(default_factory=_default_checkpoints)
    sampling: Sampling = Sampling()
    server: Server = Server()
    app: App = App()
    curate: Curate = Curate()

    @field_validator("checkpoints")
    @classmethod
    def _unique_names(cls, value: list[Checkpoint]) -> list[Checkpoint]:
        names = [c.name for c in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"checkpoint names must be unique, repeated: {', '.join(dupes)}")
        return value

    # -- derived values ---------------------------------------------------------------------
    @property
    def layout(self) -> Home:
        """The folders under the data home."""
        return Home(self.home)

    @property
    def db_path(self) -> Path:
        return self.db if self.db is not None else self.layout.db

    @property
    def local_base_url(self) -> str:
        return f"http://{url_host(self.server.host)}:{self.server.port}/v1"

    @property
    def local_headers(self) -> dict[str, str]:
        """What a request to the local vLLM server carries: its API key (`limachat serve` makes one)."""
        key = self.layout.api_key()
        return {"Authorization": f"Bearer {key}"} if key else {}

    def local(self, model: str, name: str | None = None) -> Checkpoint:
        """A checkpoint served by the local vLLM server under `model` (an adapter loaded at run time)."""
        return self.endpoint(Checkpoint(name=name or model, model=model))

    def endpoint(self, c: Checkpoint) -> Checkpoint:
        """`c` with the local server's URL filled in where none is given, and its API key: the local server
        takes requests only with the key `limachat serve` keeps in the home. Other endpoints keep their own."""
        if c.base_url and c.base_url != self.local_base_url:
            return c
        return c.model_copy(update={"base_url": self.local_base_url, "api_key": c.api_key or self.layout.api_key()})

    def checkpoint(self, name: str) -> Checkpoint:
        """The named checkpoint, with the local server's URL filled in where none is given."""
        for c in self.checkpoints:
            if c.name == name:
                return self.endpoint(c)
        known = ", ".join(c.name for c in self.checkpoints)
        raise SettingsError(f"checkpoints: no checkpoint named {name!r} (configured: {known})")

    def preset_name(self, checkpoint: str | None = None) -> str:
        """The preset a checkpoint samples with: its own, else sampling.preset, else the default."""
        own = next((c.preset for c in self.checkpoints if c.name == checkpoint), None)
        name = own or self.sampling.preset or (BUNDLED_PRESET if self.bundled_base else "lima")
        if name not in BUILTIN_PRESETS and name not in self.sampling.presets:
            where = f"checkpoints.{checkpoint}.preset" if own else "sampling.preset"
            known = ", ".join([*BUILTIN_PRESETS, *self.sampling.presets])
            raise SettingsError(f"{where}: no preset named {name!r} (known: {known})")
        return name

    def sampling_for(self, checkpoint: str | None = None) -> tuple[str, dict[str, Any]]:
        """(preset name, request fields) for a checkpoint: max_tokens, then the preset, then the
        sampling.* overrides. The endpoint's omit_params are dropped later, by its client."""
        name = self.preset_name(checkpoint)
        if name in BUILTIN:
            preset = BUILTIN[name].request()
        elif name == "model":
            preset = model_preset(self.base_folder())
        else:
            preset = self.sampling.presets[name].request()
        return name, {"max_tokens": MAX_TOKENS, **preset, **self.sampling.overrides()}

    @property
    def bundled_base(self) -> bool:
        """True for the bundled model, also when server.base names the folder limachat converted it to."""
        return self.server.base is None or _converted(self.server.base)

    def base_folder(self) -> Path:
        """The local folder of the base model (the converted bundled one by default)."""
        from limachat.serve.base import BUNDLED_NAME

        if self.server.base is None:
            return self.layout.bases / BUNDLED_NAME / "model"
        return Path(self.server.base).expanduser()

    def resolved_checkpoints(self) -> list[Checkpoint]:
        return [self.checkpoint(c.name) for c in self.checkpoints]

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        return (init_settings, env_settings, _TomlSource(settings_cls))


class _TomlSource(PydanticBaseSettingsSource):
    """Reads the TOML file named by `LIMACHAT_CONFIG` (default ./limachat.toml, if present)."""

    def __init__(self, settings_cls: type[BaseSettings]):
        super().__init__(settings_cls)
        self.path = config_path()
        self.data: dict[str, Any] = {}
        if self.path.is_file():
            try:
                self.data = tomllib.loads(self.path.read_text(encoding="utf-8-sig"))  # a BOM, as Notepad writes
            except tomllib.TOMLDecodeError as e:  # "Expected ... (at line 1, column 8)"
                m = re.match(r"(.*) \(at line (\d+), column \d+\)$", str(e))
                where, msg = (f"{self.path}:{m[2]}", m[1]) if m else (str(self.path), str(e))
                raise SettingsError(f"{where}: not valid TOML: {msg}") from None
            except UnicodeDecodeError as e:
                line = self.path.read_bytes()[: e.start].count(b"\n") + 1
                raise SettingsError(f"{self.path}:{line}: not UTF-8 text (byte 0x{e.object[e.start]:02x})") from None
        elif "LIMACHAT_CONFIG" in os.environ:
            raise SettingsError(f"LIMACHAT_CONFIG: no such file: {self.path}")

    def get_field_value(self, field, field_name):  # required by the interface, unused
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self.data


@functools.lru_cache(maxsize=8)
def _converted(base: str) -> bool:
    """Whether a base folder is limachat's conversion of the bundled GGUF (looked up once, not per reply)."""
    from limachat.serve.base import MANIFEST

    return (Path(base).expanduser() / MANIFEST).is_file()


@functools.lru_cache(maxsize=8)
def model_preset(folder: Path) -> dict[str, Any]:
    """The `model` preset: the sampling fields of the base's own generation_config.json (Hugging
    Face's repetition_penalty covers the prompt as well, like vLLM's). A field it leaves out keeps
    the endpoint's default (temperature 1, top-p 1)."""
    import json

    path = folder / "generation_config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise SettingsError(
            f"sampling preset 'model': {path} not found (prepare the base first: `limachat base`)"
        ) from None
    except (OSError, ValueError) as e:
        raise SettingsError(f"sampling preset 'model': {path}: {e}") from None
    keys = {
        "temperature": "temperature",
        "top_p": "top_p",
        "top_k": "top_k",
        "repetition_penalty": "repetition_penalty",
        "max_new_tokens": "max_tokens",
    }
    preset = {ours: config[theirs] for theirs, ours in keys.items() if config.get(theirs) is not None}
    if config.get("do_sample") is False:
        preset["temperature"] = 0.0
    return preset  # cached (read once per folder): callers copy it into a new dict


def settings_env(settings: Settings) -> dict[str, str]:
    """These settings as LIMACHAT_* variables (sections as JSON): a `limachat` command started with them
    works with the same endpoints, sampling and database as the process that started it."""
    import json

    out = {}
    for key, value in settings.model_dump(mode="json").items():
        if value is not None:
            out[ENV_PREFIX + key.upper()] = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return out


def config_path() -> Path:
    return Path(os.environ.get("LIMACHAT_CONFIG", CONFIG_FILE))


def _env_names() -> set[str]:
    """Every environment variable name that maps to a setting (top-level and nested)."""
    # Not settings: the config file, a job's progress record, and the vLLM plugin's switch and range override.
    names = {ENV_PREFIX + "CONFIG", ENV_PREFIX + "PROGRESS", PLUGIN_ENABLE, PLUGIN_RANGE}
    for name, field in Settings.model_fields.items():
        names.add(ENV_PREFIX + name.upper())
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            names |= {f"{ENV_PREFIX}{name.upper()}__{k.upper()}" for k in sub.model_fields}
    return names


def _where(loc: tuple, path: Path) -> str:
    """Name the source of a bad key: the env var if one set it, else the TOML file and line."""
    parts = [str(p) for p in loc]
    env = ENV_PREFIX + "__".join(p.upper() for p in parts[:2] if not p.isdigit())
    for candidate in (env, ENV_PREFIX + parts[0].upper()):
        if candidate in os.environ:
            return candidate
    if path.is_file():
        leaf = next((p for p in reversed(parts) if not p.isdigit()), parts[-1])
        pattern = re.compile(rf"^\s*{re.escape(leaf)}\s*=|^\s*\[{re.escape(leaf)}\]")
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                return f"{path}:{number}"
        return str(path)
    return "settings"


def load_settings(**overrides: Any) -> Settings:
    """Build the settings; raise SettingsError (one line) on an unknown key or a bad value."""
    unknown = sorted(k for k in os.environ if k.startswith(ENV_PREFIX) and k.upper() not in _env_names())
    if unknown:
        raise SettingsError(f"{unknown[0]}: unknown setting (see `limachat config` for the names)")
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        what = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        extra = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise SettingsError(f"{_where(err['loc'], config_path())}: {key}: {what}{extra}") from None
    for c in [None, *settings.checkpoints]:  # an unknown preset name stops here, not at the first reply
        settings.preset_name(c.name if c else None)
    return settings
