"""What the config names for one weight: a reference (folder, file, file name or HF repo id) and its options."""

from __future__ import annotations

from dataclasses import dataclass

from ..request.model import LORA_SCALE


class WeightRefError(ValueError):
    """A [model] entry that is neither a string nor a table with `path`; the message names the key."""


@dataclass(frozen=True)
class WeightRef:
    # A diffusers folder, a .safetensors/.ckpt file, a bare file name searched in [model.search] folders, or a
    # Hugging Face repo id ("org/name", or "org/name/file.ckpt" for one file of a repo) from the local cache.
    ref: str
    # A diffusers config folder for a single file whose architecture differs from the released one (empty: the
    # shipped SD1.5 / AnimateDiff v3 / SparseCtrl configs, chosen from the file's keys).
    config: str = ""
    # LoRA strength (LoRAs and the domain adapter only).
    scale: float = 1.0

    @classmethod
    def parse(cls, value: object, key: str) -> WeightRef | None:
        """`value` from TOML: "ref" or {path = "ref", config = "...", scale = 0.8}; empty -> None."""
        if value in ("", None):
            return None
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"path", "config", "scale"})
            if unknown:
                raise WeightRefError(f"config key '{key}' has unknown fields {unknown}; use path, config, scale")
            path, config, scale = value.get("path", ""), value.get("config", ""), value.get("scale", 1.0)
            if not isinstance(path, str) or not path:
                raise WeightRefError(f"config key '{key}' needs path = \"...\"")
            if not isinstance(config, str):
                raise WeightRefError(f"config key '{key}.config' should be a folder path")
            low, high = LORA_SCALE
            if isinstance(scale, bool) or not isinstance(scale, int | float) or not low <= scale <= high:
                raise WeightRefError(f"config key '{key}.scale' should be a number between {low:g} and {high:g}")
            return cls(path, config, float(scale))
        raise WeightRefError(f"config key '{key}' should be a string or a table with path, got {value!r}")

    def __str__(self) -> str:
        return self.ref
