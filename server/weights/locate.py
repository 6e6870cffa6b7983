"""Where a configured weight is on disk: a path, a file name in the model folders, or the local HF cache.

Nothing here goes online: repo ids are looked up in the Hugging Face cache only (`python -m server download`
is the one command that fetches). A file name is searched only inside the configured model folders, and a name
that would leave them ("../x", an absolute path hidden in a name) is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
KINDS = (
    "base",
    "motion_adapter",
    "encoder",
    "controlnet",
    "lora",
    "tokenizer",
    "vae_approx",
    "ip_adapter",
    "clip_vision",
)

# Sub-folders of a ComfyUI / AUTOMATIC1111 install where each kind of weight lives.
COMFYUI_FOLDERS = {
    "base": ["models/checkpoints"],
    "motion_adapter": ["models/animatediff_models", "custom_nodes/ComfyUI-AnimateDiff-Evolved/models"],
    "encoder": ["models/controlnet"],
    "controlnet": ["models/controlnet"],
    "lora": ["models/loras", "models/animatediff_motion_lora"],
    "tokenizer": ["comfy"],
    "vae_approx": ["models/vae_approx"],  # TAESD's taesd_decoder for live previews (engine/previews.py)
    "ip_adapter": ["models/ipadapter"],  # ComfyUI IPAdapter Plus's folder
    "clip_vision": ["models/clip_vision"],  # the IP-Adapter's image encoder
}
A1111_FOLDERS = {
    "base": ["models/Stable-diffusion"],
    "motion_adapter": ["extensions/sd-webui-animatediff/model", "models/AnimateDiff"],
    "encoder": ["models/ControlNet", "extensions/sd-webui-controlnet/models"],
    "controlnet": ["models/ControlNet", "extensions/sd-webui-controlnet/models"],
    "lora": ["models/Lora"],
    "tokenizer": [],
    "vae_approx": [],
    "ip_adapter": ["models/ControlNet", "extensions/sd-webui-controlnet/models"],  # sd-webui-controlnet keeps them
    "clip_vision": [],
}


class WeightsNotFound(FileNotFoundError):
    """A configured weight that is nowhere to be found; the message says where we looked."""


@dataclass(frozen=True)
class Located:
    path: Path  # a folder or a file
    source: str  # "path" | "search" | "hf-cache"

    @property
    def is_file(self) -> bool:
        return self.path.is_file()

    @property
    def size_bytes(self) -> int:
        if self.path.is_file():
            return self.path.stat().st_size
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


@dataclass(frozen=True)
class SearchFolders:
    """The [model.search] table: ComfyUI and A1111 roots and plain folders, searched by file name."""

    comfyui: str = ""
    a1111: str = ""
    folders: list = field(default_factory=list)  # of str

    def for_kind(self, kind: str) -> list[Path]:
        out: list[Path] = []
        for root, table in ((self.comfyui, COMFYUI_FOLDERS), (self.a1111, A1111_FOLDERS)):
            if root:
                out += [Path(root).expanduser() / sub for sub in table[kind]]
        out += [Path(f).expanduser() for f in self.folders]
        return [p for p in out if p.is_dir()]

    def described(self, kind: str) -> str:
        roots = [f"{r} ({name})" for r, name in ((self.comfyui, "ComfyUI"), (self.a1111, "A1111")) if r]
        roots += list(self.folders)
        return ", ".join(roots) if roots else "no model folders configured ([model.search])"


def is_tokenizer_dir(folder: Path) -> bool:
    """A CLIP tokenizer as transformers saves it (tokenizer.json) or as SD1.5 and ComfyUI ship it (vocab + merges)."""
    return (folder / "tokenizer.json").is_file() or (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    )


def _is_repo_id(ref: str) -> bool:
    parts = ref.split("/")
    return (
        len(parts) >= 2
        and all(p and p not in (".", "..") for p in parts)
        and not ref.startswith(("~", "."))
        and "\\" not in ref
        and ":" not in ref
    )


def _hf_offline_note() -> str:
    return " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") else ""


def locate_in_hf_cache(ref: str) -> Located | None:
    """`org/name` -> the cached snapshot folder; `org/name/sub/file.ckpt` -> that cached file. Never online."""
    from huggingface_hub import snapshot_download, try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError

    parts = ref.split("/")
    repo_id = "/".join(parts[:2])
    try:
        if len(parts) > 2:
            found = try_to_load_from_cache(repo_id, "/".join(parts[2:]))
            return Located(Path(found), "hf-cache") if isinstance(found, str) else None
        return Located(Path(snapshot_download(repo_id, local_files_only=True)), "hf-cache")
    except (LocalEntryNotFoundError, OSError, ValueError):  # not cached, or not a valid repo id at all
        return None


def _search(name: str, folders: list[Path]) -> Path | None:
    """`name` (a file name, or a relative path inside a folder) in `folders`, recursively; never outside them."""
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        return None
    for folder in folders:
        root = folder.resolve()
        direct = (root / rel).resolve()
        if direct.is_relative_to(root) and direct.exists():
            return direct
        if len(rel.parts) == 1:
            for match in sorted(root.rglob(rel.name)):
                if match.resolve().is_relative_to(root):
                    return match
    return None


def fetch_from_hub(ref: str) -> Located:
    """`org/name` or `org/name/file` downloaded into the HF cache (a progress bar per file; resumes)."""
    from huggingface_hub import hf_hub_download, snapshot_download

    parts = ref.split("/")
    repo_id = "/".join(parts[:2])
    try:
        if len(parts) > 2:
            return Located(Path(hf_hub_download(repo_id, "/".join(parts[2:]))), "hf-download")
        return Located(Path(snapshot_download(repo_id)), "hf-download")
    except Exception as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise WeightsNotFound(f"{ref}: not in the HF cache, and downloading it failed: {first}") from e


def locate(ref: str, kind: str, search: SearchFolders, allow_download: bool = False) -> Located:
    """Find `ref` for a weight of `kind` (see KINDS). Raises WeightsNotFound naming every place tried.
    `allow_download` ([model] hub_downloads): a repo id missing from the cache is fetched, unless HF_HUB_OFFLINE."""
    if kind not in KINDS:
        raise ValueError(f"unknown weight kind {kind!r}")
    path = Path(ref).expanduser()
    if path.exists():
        return Located(path.resolve(), "path")
    if path.is_absolute() or ref.startswith(("~", "./", "../")):
        raise WeightsNotFound(f"{ref}: no such file or folder")
    folders = search.for_kind(kind)
    # A name without a suffix finds the .safetensors before the pickled formats (the safer one wins).
    names = [ref] if ref.lower().endswith(WEIGHT_SUFFIXES) else [ref, *(ref + suffix for suffix in WEIGHT_SUFFIXES)]
    for name in names:
        found = _search(name, folders)
        if found is not None:
            return Located(found, "search")
    tried = [f"the model folders: {search.described(kind)}"]
    if _is_repo_id(ref):
        cached = locate_in_hf_cache(ref)
        if cached is not None:
            return cached
        if allow_download and not _hf_offline_note():
            return fetch_from_hub(ref)
        tried.append(
            f"the Hugging Face cache{_hf_offline_note()} (`python -m server download` fetches the default set; "
            f"`huggingface-cli download {'/'.join(ref.split('/')[:2])}` any repo)"
        )
    raise WeightsNotFound(f"{ref}: not found; looked in {'; and '.join(tried)}")
