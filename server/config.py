"""Server configuration: the packaged defaults.toml, a user's TOML laid over it, flags laid over that.

The values themselves live only in defaults.toml; this module gives them types and checks that a user's
file names only keys that exist, so a typo is an error at start rather than a silently ignored setting.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import MISSING, dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any

from .request.errors import RequestError
from .request.limits import Limits
from .request.model import MODALITIES, SCHEDULER_NAMES, configurable_fields
from .request.owner import OWNER_MAX_CHARS, PRIORITY_RANGE, ArtistToken, owner_problem
from .request.schema import parse_body
from .weights.locate import SearchFolders
from .weights.refs import WeightRef, WeightRefError


class ConfigError(ValueError):
    """A config file or flag that cannot be used; the message names the key or file."""


@dataclass(frozen=True)
class ServerSection:
    host: str
    port: int
    data_dir: str
    max_body_mb: int
    log_level: str
    token: str
    allowed_hosts: list
    allowed_origins: list


# [model] keys that name weights (a string or { path, config, scale }); see server/weights/refs.py.
WEIGHT_KEYS = ("base", "vae", "tokenizer", "motion_adapter", "draft_motion_adapter", "domain_adapter")
TEMPORAL_NORMS = ("per_frame", "joint")
IP_ADAPTER_KEYS = ("adapter", "image_encoder")  # [model.ip_adapter]


@dataclass(frozen=True)
class IPAdapterRefs:
    """[model.ip_adapter]: the adapter file and its CLIP image encoder (None: found beside the adapter or in the
    clip_vision folders; weights/ip_adapter.py)."""

    adapter: WeightRef
    image_encoder: WeightRef | None = None


@dataclass(frozen=True)
class ModelSection:
    name: str
    device: str
    dtype: str
    encoders_on_device: bool
    temporal_norm: str
    cache_converted: bool
    hub_downloads: bool = False
    base: WeightRef | None = None
    vae: WeightRef | None = None
    tokenizer: WeightRef | None = None
    motion_adapter: WeightRef | None = None
    draft_motion_adapter: WeightRef | None = None
    domain_adapter: WeightRef | None = None
    encoders: dict[str, WeightRef] = field(default_factory=dict)
    # name -> a per-frame SD1.5 ControlNet (e.g. depth = "lllyasviel/control_v11f1p_sd15_depth"); #16.
    controlnets: dict[str, WeightRef] = field(default_factory=dict)
    loras: dict[str, WeightRef] = field(default_factory=dict)
    search: SearchFolders = field(default_factory=SearchFolders)
    ip_adapter: IPAdapterRefs | None = None  # for a job's reference (#30)

    @property
    def is_tiny(self) -> bool:
        return self.base is not None and self.base.ref == "tiny"


# [generation]: a default for every request field marked default_from_config in request/model.py, so a new
# request field is a new key here without touching this file. Annotations as strings, as _typed reads them.
GenerationDefaults = make_dataclass(
    "GenerationDefaults",
    [(name, f.type if isinstance(f.type, str) else f.type.__name__) for name, f in configurable_fields().items()],
    frozen=True,
)


@dataclass(frozen=True)
class LongVideo:
    window_length: int
    window_overlap: int
    shared_noise: bool
    decode_chunk: int


@dataclass(frozen=True)
class Performance:
    vae_slicing: str
    channels_last: bool
    fuse_qkv: bool
    compile: bool
    offload: str
    offload_margin_gb: float
    feed_forward_chunking: str
    cfg_halves: str
    park_idle_weights: str


@dataclass(frozen=True)
class Draft:
    scale: float
    steps: int
    adapter_scale: float
    adapter_scheduler: str
    adapter_steps: int
    adapter_guidance_scale: float
    adapter_lora: str


@dataclass(frozen=True)
class Retention:
    max_age_hours: float
    max_total_mb: float


@dataclass(frozen=True)
class Cluster:
    backend: str
    address: str
    gpus_per_worker: float
    max_attempts: int
    worker_data_dir: str
    start_timeout_s: float


@dataclass(frozen=True)
class Auth:
    artists: tuple[ArtistToken, ...] = ()


@dataclass(frozen=True)
class Config:
    server: ServerSection
    model: ModelSection
    generation: GenerationDefaults
    scheduler: dict[str, Any]
    limits: Limits
    retention: Retention
    long_video: LongVideo
    performance: Performance
    draft: Draft
    cluster: Cluster
    auth: Auth = Auth()

    @property
    def data_dir(self) -> Path:
        if self.server.data_dir:
            return Path(self.server.data_dir).expanduser()
        base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
        return Path(base) / "sparsectrl-previs"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


def _packaged_defaults() -> dict[str, Any]:
    return _read_toml(Path(__file__).with_name("defaults.toml"))


def _merge(base: dict[str, Any], over: dict[str, Any], where: str, open_tables: set[str]) -> dict[str, Any]:
    """Lay `over` on `base`; keys unknown to `base` are errors except inside `open_tables`."""
    out = dict(base)
    for key, value in over.items():
        path = f"{where}.{key}" if where else key
        if key not in base and path not in open_tables and not _inside(where, open_tables):
            raise ConfigError(f"unknown config key '{path}'")
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = _merge(base[key], value, path, open_tables)
        else:
            out[key] = value
    return out


# Tables whose keys are free-form: encoder names per modality, ControlNet and LoRA names, scheduler kwargs (and, inside
# [scheduler], a table of kwargs per scheduler name).
_OPEN_TABLES = {"model.encoders", "model.controlnets", "model.loras", "scheduler"}


def _inside(where: str, open_tables: set[str]) -> bool:
    return any(where == table or where.startswith(table + ".") for table in open_tables)


def _typed(cls: type, table: dict[str, Any], name: str) -> Any:
    kwargs = {}
    for f in fields(cls):
        if f.name not in table:
            if f.default is not MISSING or f.default_factory is not MISSING:
                continue
            raise ConfigError(f"missing config key '{name}.{f.name}'")
        value = table[f.name]
        expected = {"int": int, "float": (int, float), "str": str, "bool": bool, "list": list}.get(str(f.type))
        if expected is not None and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
            raise ConfigError(f"config key '{name}.{f.name}' should be {f.type}, got {value!r}")
        if f.type == "list" and not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config key '{name}.{f.name}' should be a list of strings, got {value!r}")
        kwargs[f.name] = float(value) if f.type == "float" else value
    return cls(**kwargs)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the TOML at `path`, then `overrides` ({"server": {"port": 9000}, ...})."""
    raw = _packaged_defaults()
    if path:
        raw = _merge(raw, _read_toml(Path(path)), "", _OPEN_TABLES)
    if overrides:
        raw = _merge(raw, overrides, "", _OPEN_TABLES)

    model = _model_section(dict(raw["model"]))

    generation_table = dict(raw["generation"])
    if model.is_tiny:
        generation_table.update(raw.get("tiny_generation", {}))
    limits = _typed(Limits, raw["limits"], "limits")
    return Config(
        server=_typed(ServerSection, raw["server"], "server"),
        model=model,
        generation=_check_generation(_typed(GenerationDefaults, generation_table, "generation"), limits),
        scheduler=_check_scheduler(dict(raw.get("scheduler", {}))),
        limits=limits,
        retention=_typed(Retention, raw["retention"], "retention"),
        long_video=_check_windows(_typed(LongVideo, raw["long_video"], "long_video")),
        performance=_check_performance(_typed(Performance, raw["performance"], "performance")),
        draft=_check_draft(_typed(Draft, raw["draft"], "draft"), model),
        cluster=_check_cluster(_typed(Cluster, raw["cluster"], "cluster")),
        auth=_auth(raw["auth"], raw["server"].get("token", "")),
    )


MIN_TOKEN_CHARS = 16


def _auth(table: dict[str, Any], shared_token: str) -> Auth:
    """[auth] artists: each entry a table of owner, token and max_priority (default 0); tokens unique and long."""
    unknown = sorted(set(table) - {"artists"})
    if unknown:
        raise ConfigError(f"unknown config key 'auth.{unknown[0]}'")
    entries = table.get("artists", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError("[auth] artists should be a list of tables { owner, token, max_priority }")
    artists, seen = [], {shared_token} if shared_token else set()
    for n, entry in enumerate(entries):
        where = f"[auth] artists[{n}]"
        if extra := sorted(set(entry) - {"owner", "token", "max_priority"}):
            raise ConfigError(f"{where} has unknown key {extra[0]!r} (owner, token, max_priority)")
        owner, token, top = entry.get("owner"), entry.get("token"), entry.get("max_priority", 0)
        problem = owner_problem(owner) if isinstance(owner, str) else "a name is needed"
        if problem or len(owner) > OWNER_MAX_CHARS:
            raise ConfigError(f"{where} owner: {problem or f'at most {OWNER_MAX_CHARS} characters'}")
        if not isinstance(token, str) or len(token.strip()) < MIN_TOKEN_CHARS:
            raise ConfigError(f"{where} ({owner}): token should be a string of at least {MIN_TOKEN_CHARS} characters")
        if token.strip() in seen:
            raise ConfigError(f"{where} ({owner}): token is used twice (or is server.token)")
        if not isinstance(top, int) or isinstance(top, bool) or not PRIORITY_RANGE[0] <= top <= PRIORITY_RANGE[1]:
            raise ConfigError(f"{where} ({owner}): max_priority should be an integer from -10 to 10")
        seen.add(token.strip())
        artists.append(ArtistToken(owner, token.strip(), top))
    return Auth(tuple(artists))


def _model_section(table: dict[str, Any]) -> ModelSection:
    try:
        refs = {key: WeightRef.parse(table.pop(key, ""), f"model.{key}") for key in WEIGHT_KEYS}
        encoders = {
            str(k): ref
            for k, v in table.pop("encoders", {}).items()
            if (ref := WeightRef.parse(v, f"model.encoders.{k}")) is not None
        }
        controlnets = {
            str(k): ref
            for k, v in table.pop("controlnets", {}).items()
            if (ref := WeightRef.parse(v, f"model.controlnets.{k}")) is not None
        }
        loras = {
            str(k): ref
            for k, v in table.pop("loras", {}).items()
            if (ref := WeightRef.parse(v, f"model.loras.{k}")) is not None
        }
        ip_table = table.pop("ip_adapter", {})
        ip_refs = {k: WeightRef.parse(ip_table.get(k, ""), f"model.ip_adapter.{k}") for k in IP_ADAPTER_KEYS}
    except WeightRefError as e:
        raise ConfigError(str(e)) from None
    unknown = sorted(set(encoders) - set(MODALITIES))
    if unknown:
        raise ConfigError(f"[model.encoders] names unknown modalities {unknown}; known: {list(MODALITIES)}")
    bad_names = [n for n in loras if not _is_name(n) or n == "domain_adapter"]
    if bad_names:
        raise ConfigError(f"[model.loras] names {bad_names}: use letters, digits, - and _ (not 'domain_adapter')")
    bad_names = [n for n in controlnets if not _is_name(n)]
    if bad_names:
        raise ConfigError(f"[model.controlnets] names {bad_names}: use letters, digits, - and _ (e.g. depth)")
    search_table = table.pop("search", {})
    search = _typed(SearchFolders, {**search_table, "folders": list(search_table.get("folders", []))}, "model.search")
    model = _typed(ModelSection, table, "model")
    if model.temporal_norm not in TEMPORAL_NORMS:
        raise ConfigError(f"[model] temporal_norm must be one of {list(TEMPORAL_NORMS)}")
    if ip_refs["image_encoder"] is not None and ip_refs["adapter"] is None:
        raise ConfigError("[model.ip_adapter] names an image_encoder but no adapter: set adapter too (docs/weights.md)")
    ip_adapter = IPAdapterRefs(ip_refs["adapter"], ip_refs["image_encoder"]) if ip_refs["adapter"] else None
    parts = {"encoders": encoders, "controlnets": controlnets, "loras": loras, "search": search}
    parts["ip_adapter"] = ip_adapter
    return ModelSection(**{**model.__dict__, **refs, **parts})


def _is_name(name: str) -> bool:
    return bool(name) and name.replace("-", "").replace("_", "").isalnum() and name.isascii()


def _check_generation(defaults, limits: Limits):
    """[generation] defaults are checked as a request is (request/schema.py): a default outside [limits]
    would otherwise reach the engine unchecked."""
    body = {name: getattr(defaults, name) for name in configurable_fields()}
    body |= {"prompt": "", "modality": MODALITIES[0], "keyframes": [{"index": 0, "image": "-"}]}
    try:
        parse_body(body, limits)
    except RequestError as e:
        raise ConfigError(f"[generation] defaults do not fit [limits]: {e.message}") from None
    return defaults


def _check_scheduler(table: dict[str, Any]) -> dict[str, Any]:
    """[scheduler]'s kwargs, with a [scheduler.NAME] table allowed only for a scheduler the server offers."""
    unknown = sorted(k for k, v in table.items() if isinstance(v, dict) and k not in SCHEDULER_NAMES)
    if unknown:
        raise ConfigError(f"[scheduler] has tables for unknown schedulers {unknown}; known: {list(SCHEDULER_NAMES)}")
    return table


def _check_performance(performance: Performance) -> Performance:
    if performance.vae_slicing not in ("auto", "on", "off"):
        raise ConfigError('[performance] vae_slicing must be "auto", "on" or "off"')
    if performance.offload not in ("auto", "none", "model", "sequential"):
        raise ConfigError('[performance] offload must be "auto", "none", "model" or "sequential"')
    for key in ("feed_forward_chunking", "park_idle_weights"):
        if getattr(performance, key) not in ("auto", "on", "off"):
            raise ConfigError(f'[performance] {key} must be "auto", "on" or "off"')
    if performance.cfg_halves not in ("auto", "together", "sequential"):
        raise ConfigError('[performance] cfg_halves must be "auto", "together" or "sequential"')
    return performance


def _check_draft(draft: Draft, model: ModelSection) -> Draft:
    if draft.adapter_lora and draft.adapter_lora not in model.loras:
        raise ConfigError(f"[draft] adapter_lora = {draft.adapter_lora!r} is not a name in [model.loras]")
    if not (
        0.1 <= draft.scale <= 1.0
        and draft.steps >= 1
        and 0.1 <= draft.adapter_scale <= 1.0
        and draft.adapter_steps >= 1
    ):
        raise ConfigError("[draft] needs scales between 0.1 and 1 and steps >= 1")
    return draft


def _check_windows(long_video: LongVideo) -> LongVideo:
    if not (1 <= long_video.window_length <= 32 and 0 <= long_video.window_overlap < long_video.window_length):
        raise ConfigError(
            "[long_video] needs 1 <= window_length <= 32 (the motion module's reach) and "
            "0 <= window_overlap < window_length"
        )
    if long_video.decode_chunk < 1:
        raise ConfigError("[long_video] decode_chunk must be at least 1")
    return long_video


def _check_cluster(cluster: Cluster) -> Cluster:
    if cluster.backend not in ("local", "ray"):
        raise ConfigError('[cluster] backend must be "local" (this process runs the jobs) or "ray"')
    if cluster.address.startswith("ray://"):
        raise ConfigError(
            "[cluster] address: ray:// (Ray Client) is not supported; run the server on a node of the cluster and "
            'give the head\'s GCS address ("auto" or "HOST:6379", docs/cluster.md)'
        )
    if not (cluster.gpus_per_worker > 0 and cluster.max_attempts >= 1 and cluster.start_timeout_s > 0):
        raise ConfigError("[cluster] needs gpus_per_worker > 0, max_attempts >= 1 and start_timeout_s > 0")
    return cluster
