"""The engine a config describes, loaded: what `serve`, `generate` and every cluster worker start from."""

from __future__ import annotations

from ..config import Config
from .engine import Engine
from .models import load_model
from .previews import find_preview_decoder


def build_engine(config: Config) -> Engine:
    model = load_model(config.model, config.data_dir, config.performance)
    engine = Engine(
        model,
        config.scheduler,
        config.long_video,
        keep_encoders_on_device=config.model.encoders_on_device,
        performance=config.performance,
        compile_cache=config.data_dir / "torch-compile",
    )
    engine.preview_decoder = find_preview_decoder(config.model.search, model.device, model.dtype)
    return engine
