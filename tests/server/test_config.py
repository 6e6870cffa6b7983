from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from server.config import ConfigError, load_config
from server.weights.refs import WeightRef
from tests.conftest import ROOT


def test_defaults_come_from_the_packaged_toml():
    config = load_config()
    raw = tomllib.loads((ROOT / "server" / "defaults.toml").read_text())
    assert config.generation.steps == raw["generation"]["steps"]
    assert config.generation.scheduler == raw["generation"]["scheduler"]
    assert config.server.host == "127.0.0.1"
    assert config.scheduler["steps_offset"] == 1


def test_user_file_and_flags_override_in_order(tmp_path: Path):
    path = tmp_path / "server.toml"
    path.write_text(
        '[server]\nport = 9000\n[model]\nbase = "/m/sd15"\n[model.encoders]\nlineart = "/m/scribble"\n'
        '[generation]\nsteps = 30\nscheduler = "euler"\n'
    )
    config = load_config(path, {"server": {"port": 9100}})
    assert config.server.port == 9100
    assert config.generation.steps == 30 and config.generation.scheduler == "euler"
    assert config.generation.width == load_config().generation.width
    assert config.model.encoders == {"lineart": WeightRef("/m/scribble")}


def test_tiny_model_uses_the_tiny_generation_defaults():
    config = load_config(overrides={"model": {"base": "tiny"}})
    raw = tomllib.loads((ROOT / "server" / "defaults.toml").read_text())
    assert config.generation.width == raw["tiny_generation"]["width"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("[server]\nprot = 1\n", "unknown config key 'server.prot'"),
        ('[generation]\nsteps = "many"\n', "'generation.steps' should be int"),
        ('[model.encoders]\nnormal = "/x"\n', "unknown modalities ['normal']"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_bad_config_files_give_one_clear_error(tmp_path: Path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(path)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/server.toml")


def test_the_example_configs_load():
    from server.train.config import load_train_config

    server = load_config(ROOT / "server.example.toml")
    assert server.model.base.ref.endswith(".safetensors") and set(server.model.encoders) == {"lineart", "rgb"}
    train = load_train_config(ROOT / "train.example.toml")
    assert train["train"]["mixed_precision"] == "bf16" and train.model.motion_adapter.ref == "v3_sd15_mm.ckpt"
