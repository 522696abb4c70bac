"""Settings: defaults, limachat.toml, LIMACHAT_* variables, and one-line errors naming the key."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from limachat.cli import main
from limachat.settings import SettingsError, load_settings


def test_defaults_are_lima_sampling_and_local_checkpoints(clean_env):
    s = load_settings()
    # the bundled model's measured default: LIMA's penalty on generated tokens only, at a lower temperature
    assert s.sampling_for("dialogue") == (
        "focused",
        {
            "max_tokens": 512,
            "temperature": 0.3,
            "top_p": 0.9,
            "generated_repetition_penalty": 1.1,
            "penalty_scope": "conversation",
        },
    )
    assert s.home == Path("data") and s.db_path == Path("data/limachat.db")
    assert [c.name for c in s.checkpoints] == ["zero-shot", "dialogue"]
    assert s.checkpoint("dialogue").base_url == "http://127.0.0.1:8000/v1"
    assert (s.server.host, s.server.port, s.app.port) == ("127.0.0.1", 8000, 7860)


def test_toml_points_a_checkpoint_at_another_endpoint(clean_env):
    (clean_env / "limachat.toml").write_text(
        'home = "/srv/lima"\n[server]\nport = 8100\n[sampling]\ntemperature = 0.2\nrepetition_penalty = 1.0\n'
        '[[checkpoints]]\nname = "zero-shot"\nmodel = "zero-shot"\n'
        '[[checkpoints]]\nname = "dialogue"\nmodel = "lima-1030"\nbase_url = "http://gpu-box:9000/v1"\napi_key = "k"\n'
    )
    s = load_settings()
    assert s.home == Path("/srv/lima") and s.sampling.temperature == 0.2
    assert s.sampling_for("zero-shot")[1]["top_p"] == 0.9 and s.sampling_for("zero-shot")[1]["temperature"] == 0.2
    assert s.checkpoint("zero-shot").base_url == "http://127.0.0.1:8100/v1"  # the local server follows server.port
    d = s.checkpoint("dialogue")
    assert (d.base_url, d.model, d.api_key) == ("http://gpu-box:9000/v1", "lima-1030", "k")


def test_environment_overrides_toml(clean_env, monkeypatch):
    (clean_env / "limachat.toml").write_text("[sampling]\ntemperature = 0.2\n")
    monkeypatch.setenv("LIMACHAT_SAMPLING__TEMPERATURE", "0.9")
    monkeypatch.setenv("LIMACHAT_HOME", "/tmp/elsewhere")
    s = load_settings()
    assert s.sampling.temperature == 0.9 and s.home == Path("/tmp/elsewhere")


def test_unknown_toml_key_names_file_line_and_key(clean_env):
    (clean_env / "limachat.toml").write_text("[server]\nport = 8000\n\n[sampling]\ntemprature = 0.3\n")
    with pytest.raises(SettingsError) as e:
        load_settings()
    assert str(e.value) == "limachat.toml:5: sampling.temprature: unknown key"


def test_bad_value_names_key(clean_env):
    (clean_env / "limachat.toml").write_text("[sampling]\ntop_p = 1.5\n")
    with pytest.raises(
        SettingsError, match=r"^limachat.toml:2: sampling.top_p: Input should be less than or equal to 1"
    ):
        load_settings()


def test_bad_env_value_and_unknown_env_name(clean_env, monkeypatch):
    monkeypatch.setenv("LIMACHAT_SERVER__PORT", "eighty")
    with pytest.raises(SettingsError, match=r"^LIMACHAT_SERVER__PORT: server.port: "):
        load_settings()
    monkeypatch.delenv("LIMACHAT_SERVER__PORT")
    monkeypatch.setenv("LIMACHAT_SAMPLNG__TOP_P", "0.5")
    with pytest.raises(SettingsError, match=r"^LIMACHAT_SAMPLNG__TOP_P: unknown setting"):
        load_settings()


def test_invalid_toml_and_duplicate_checkpoints(clean_env):
    (clean_env / "limachat.toml").write_text("[server\nport = 1\n")
    with pytest.raises(SettingsError, match=r"^limachat.toml:1: not valid TOML"):
        load_settings()
    (clean_env / "limachat.toml").write_text(
        '[[checkpoints]]\nname="a"\nmodel="x"\n[[checkpoints]]\nname="a"\nmodel="y"\n'
    )
    with pytest.raises(SettingsError, match="repeated: a"):
        load_settings()


def test_cli_reports_a_bad_key_in_one_line(clean_env):
    (clean_env / "limachat.toml").write_text("[app]\nprot = 1\n")
    result = CliRunner().invoke(main, ["config"])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: limachat.toml:2: app.prot: unknown key"


def test_presets_per_checkpoint_user_defined_and_from_the_model(clean_env):
    (clean_env / "limachat.toml").write_text(
        '[sampling]\npreset = "calm"\n[sampling.presets.calm]\ntemperature = 0.3\ngenerated_repetition_penalty = 1.1\n'
        '[[checkpoints]]\nname = "zero-shot"\nmodel = "zero-shot"\npreset = "model"\n'
        '[[checkpoints]]\nname = "dialogue"\nmodel = "dialogue"\n'
    )
    folder = clean_env / "data" / "base" / "SmolLM2-135M-Instruct" / "model"
    folder.mkdir(parents=True)
    (folder / "generation_config.json").write_text(
        '{"temperature": 0.2, "top_p": 0.9, "repetition_penalty": 1.1, "eos_token_id": 2}'
    )
    s = load_settings()
    assert s.sampling_for("dialogue") == (
        "calm",
        {"max_tokens": 512, "temperature": 0.3, "generated_repetition_penalty": 1.1},
    )
    assert s.sampling_for("zero-shot") == (
        "model",
        {"max_tokens": 512, "temperature": 0.2, "top_p": 0.9, "repetition_penalty": 1.1},
    )


def test_a_users_own_base_defaults_to_lima_and_unknown_presets_are_named(clean_env):
    (clean_env / "limachat.toml").write_text(
        '[server]\nbase = "/models/llama-7b"\n[[checkpoints]]\nname = "x"\nmodel = "x"\npreset = "fast"\n'
    )
    with pytest.raises(
        SettingsError, match=r"^checkpoints.x.preset: no preset named 'fast' \(known: lima, focused, model\)$"
    ):
        load_settings()
    (clean_env / "limachat.toml").write_text('[server]\nbase = "/models/llama-7b"\n')
    assert load_settings().sampling_for("dialogue") == (
        "lima",
        {
            "max_tokens": 512,
            "temperature": 0.7,
            "top_p": 0.9,
            "generated_repetition_penalty": 1.2,
            "penalty_scope": "conversation",
        },
    )
    (clean_env / "limachat.toml").write_text('[sampling]\npreset = "nope"\n')
    with pytest.raises(SettingsError, match=r"^sampling.preset: no preset named 'nope'"):
        load_settings()  # at start-up, not at the first reply
    (clean_env / "limachat.toml").write_text("[sampling.presets.lima]\ntemperature = 0.1\n")
    with pytest.raises(SettingsError, match="sampling.presets: .*'lima' is a built-in preset"):
        load_settings()
