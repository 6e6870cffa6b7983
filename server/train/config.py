"""The training config: train_defaults.toml, a user's train.toml over it, flags over that. Unknown keys are errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, _merge, _model_section, _read_toml


@dataclass(frozen=True)
class TrainConfig:
    raw: dict[str, Any]  # the merged tables, as written to the run's folder
    model: Any  # a server ModelSection (the same weight references as the server)

    def __getitem__(self, table: str) -> dict[str, Any]:
        return self.raw[table]

    @property
    def output_dir(self) -> Path:
        return Path(self.raw["train"]["output_dir"]).expanduser()


def load_train_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    raw = _read_toml(Path(__file__).with_name("train_defaults.toml"))
    if path:
        raw = _merge(raw, _read_toml(Path(path)), "", set())
    if overrides:
        raw = _merge(raw, overrides, "", set())
    model_table = {k: v for k, v in raw["model"].items() if v not in ("", None)}
    model_table.setdefault("search", raw["model"]["search"])
    defaults = {"name": "", "device": raw["train"]["device"], "dtype": "auto", "encoders_on_device": False}
    fixed = {"temporal_norm": "per_frame", "cache_converted": True, "hub_downloads": False}
    model = _model_section({**defaults, **fixed, **model_table})
    if model.base is None or (model.motion_adapter is None and not model.is_tiny):
        raise ConfigError("[model] needs base and motion_adapter: the frozen SD1.5 + AnimateDiff v3 model")
    masks = raw["masks"]
    if min(masks["first"], masks["first_last"], masks["random"], masks["all"]) < 0 or not any(
        masks[k] > 0 for k in ("first", "first_last", "random", "all")
    ):
        raise ConfigError("[masks] weights must be >= 0 and not all 0")
    if raw["encoder"]["temporal_init"] not in ("motion_module", "identity"):
        raise ConfigError('[encoder] temporal_init must be "motion_module" or "identity"')
    if raw["train"]["mixed_precision"] not in ("no", "fp16", "bf16"):
        raise ConfigError('[train] mixed_precision must be "no", "fp16" or "bf16"')
    data = raw["data"]
    if not data["clips"]:
        raise ConfigError("[data] clips must name a folder (prepared clips, or where videos are prepared)")
    if data["videos"] and not data["depth_model"]:
        raise ConfigError("[data] videos need depth_model: a transformers depth-estimation model folder")
    if data["width"] % 8 or data["height"] % 8 or not 1 <= data["frames"] <= 32:
        raise ConfigError("[data] width and height must be multiples of 8 and frames between 1 and 32")
    return TrainConfig(raw, model)
