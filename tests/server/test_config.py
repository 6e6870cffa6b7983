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
        ('[auth]\nartists = [{ owner = "ana", token = "short" }]\n', "token should be a string of at least 16"),
        ('[auth]\nartists = [{ owner = "\\u202eana", token = "0123456789abcdef" }]\n', "may not hold U.202E"),
        ('[auth]\nartists = [{ owner = "ana", token = "0123456789abcdef", max_priority = 11 }]\n', "from -10 to 10"),
        ('[auth]\nartists = [{ owner = "ana", token = "0123456789abcdef", admin = true }]\n', "unknown key 'admin'"),
        (
            '[server]\ntoken = "0123456789abcdef"\n[auth]\nartists = [{ owner = "a", token = "0123456789abcdef" }]\n',
            "token is used twice",
        ),
        ("[auth]\nusers = []\n", "unknown config key 'auth.users'"),
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


def test_scheduler_keys_for_all_and_per_scheduler_tables(tmp_path: Path):
    """[scheduler] keys reach every scheduler; [scheduler.NAME] one scheduler, over the packaged DDIM table."""
    from diffusers import DDIMScheduler

    from server.engine.schedulers import build_scheduler
    from server.weights.convert import CONFIGS

    path = tmp_path / "server.toml"
    path.write_text('[scheduler]\ntimestep_spacing = "trailing"\n[scheduler.euler]\nrescale_betas_zero_snr = true\n')
    config = load_config(path)
    sd15 = dict(DDIMScheduler.load_config(CONFIGS / "sd15" / "scheduler"))
    euler = build_scheduler("euler", sd15, config.scheduler)
    assert euler.config.timestep_spacing == "trailing" and euler.config.rescale_betas_zero_snr
    ddim = build_scheduler("ddim", sd15, config.scheduler)
    assert ddim.config.timestep_spacing == "leading" and not ddim.config.rescale_betas_zero_snr  # its own table
    path.write_text('[scheduler.ddim]\ntimestep_spacing = "trailing"\n')
    assert build_scheduler("ddim", sd15, load_config(path).scheduler).config.timestep_spacing == "trailing"

    path.write_text("[scheduler.heun]\nsteps_offset = 1\n")
    with pytest.raises(ConfigError, match=r"unknown schedulers \['heun'\]"):
        load_config(path)
