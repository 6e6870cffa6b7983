"""Reading one weights file safely: .safetensors as is, .ckpt/.pt/.pth/.bin only as tensors (no code runs).

A pickled checkpoint can execute code when loaded; `torch.load(weights_only=True)` refuses anything but tensors
and plain containers, so a booby-trapped .ckpt fails with a clear message instead of running.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
# Containers the original training scripts wrap their weights in (AnimateDiff: "state_dict", SparseCtrl:
# "controlnet"; Lightning: "state_dict").
_WRAPPERS = ("state_dict", "controlnet", "module")


class CheckpointError(ValueError):
    """A file that cannot be used; the message names the file and what was expected of it."""


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path}: not a readable .safetensors file ({e}); it may be truncated (an interrupted download?) or "
            "not a safetensors file at all"
        ) from e


def read_pickle(path: Path) -> dict:
    """A pickled checkpoint as tensors only (weights_only), its nesting kept; CheckpointError says what is wrong."""
    log.info(
        "%s: a pickled checkpoint, read as tensors only (weights_only); a .safetensors copy loads safer", path.name
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0][:200]
        raise CheckpointError(
            f"{path}: holds pickled Python objects besides tensors, which would run code when loaded ({first}). "
            "Pickled checkpoints (.ckpt, .pt, .pth, .bin) are only read with torch.load(weights_only=True): use "
            "the .safetensors version of this model, or convert it once where you trust it"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({str(e).strip().splitlines()[0][:200]}); it may be "
            "truncated (an interrupted download?) or corrupt"
        ) from e


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors in `path`, unwrapped from the training scripts' containers; other entries are dropped."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        data = _read_safetensors(path)
    elif suffix in PICKLE_SUFFIXES:
        data = read_pickle(path)
    else:
        raise CheckpointError(f"{path}: unknown weights format {suffix!r}; expected .safetensors or .ckpt")
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: holds a {type(data).__name__}, not a dictionary of weights")
    for wrapper in _WRAPPERS:
        if isinstance(data.get(wrapper), dict):
            data = data[wrapper]
    tensors = {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: holds no weights")
    return tensors
