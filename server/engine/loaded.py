"""What a loaded model holds: the base pipeline's parts, the condition encoders, ControlNets and LoRAs, and how it
sits on the device. models.py builds it; performance.py applies the speed and memory levers to it; the engine
generates with it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..request.model import MODALITIES


@dataclass
class LoadedModel:
    name: str
    tiny: bool
    device: torch.device
    dtype: torch.dtype
    vae: Any
    text_encoder: Any
    tokenizer: Any
    unet: Any  # UNetMotionModel
    scheduler_config: dict[str, Any]
    encoders: dict[str, Any] = field(default_factory=dict)  # modality -> SparseControlNetModel
    # "final" (the one merged into unet) and, if configured, "draft": MotionAdapters kept on the CPU to swap in.
    motion_adapters: dict[str, Any] = field(default_factory=dict)
    controlnets: dict[str, Any] = field(default_factory=dict)  # name -> ControlNetModel (per frame; #16)
    # name -> default scale of the LoRAs a request may turn on (loaded into unet/text_encoder as peft adapters).
    loras: dict[str, float] = field(default_factory=dict)
    # "none", or diffusers' "model" / "sequential" CPU offload for GPUs too small to hold it all (performance.py).
    offload: str = "none"
    encoders_on_device: bool = False
    # The IP-Adapter for references (weights/ip_adapter.py IPAdapterWeights; None: none configured). The engine
    # installs it into the UNet (engine/reference.py).
    ip_adapter: Any = None
    installed_ip_adapter: Any = None  # engine/reference.py InstalledAdapter, once an engine has installed it

    @property
    def has_draft_adapter(self) -> bool:
        return "draft" in self.motion_adapters

    @property
    def modalities(self) -> list[str]:
        return [m for m in MODALITIES if m in self.encoders]
