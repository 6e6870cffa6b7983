"""What the loaded model offers, as the job service needs it to check requests and answer /v1/health.

Locally it is read off the engine; on a Ray cluster each worker sends its own (the head loads no weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelInfo:
    name: str
    tiny: bool
    device: str
    dtype: str
    modalities: list[str] = field(default_factory=list)
    loras: dict[str, float] = field(default_factory=dict)  # name -> default scale
    draft_motion_module: bool = False
    controlnets: list[str] = field(default_factory=list)  # per-frame ControlNets by name
    # The IP-Adapter references use: {"name", "kind", "image_encoder"}; None: none configured.
    ip_adapter: dict | None = None

    @classmethod
    def of(cls, model) -> ModelInfo:
        """From a loaded model (engine/loaded.py LoadedModel)."""
        return cls(
            name=model.name,
            tiny=model.tiny,
            device=str(model.device),
            dtype=str(model.dtype).removeprefix("torch."),
            modalities=list(model.modalities),
            loras=dict(model.loras),
            draft_motion_module=model.has_draft_adapter,
            controlnets=sorted(model.controlnets),
            ip_adapter=_ip_adapter(model.ip_adapter),
        )


def _ip_adapter(weights) -> dict | None:
    if weights is None:
        return None
    encoder = getattr(weights, "image_encoder_path", None)
    return {"name": weights.name, "kind": weights.kind, "image_encoder": str(encoder) if encoder else None}
