"""The paper's recipe for a new SparseCtrl encoder, on a frozen SD1.5 + AnimateDiff v3 model.

- The encoder is diffusers' `SparseControlNetModel`, initialised from the UNet's encoder half where shapes match
  (`from_unet`, as ControlNet does); its outputs (`controlnet_*` projections, the condition embedding's last
  conv) start at zero and its temporal layers as identities (zero output projection), so training starts from
  the text-to-video model unchanged.
- Its input per frame is the condition image and a binary mask channel; the noisy latent is not an input
  (SparseControlNetModel zeroes it). Masks are drawn per clip (masks.py): first frame, first + last, a few, all.
- The loss is the standard noise-prediction MSE of the frozen UNet, steered by the encoder's residuals.
- Every random draw of step k comes from a generator seeded with (seed, k), so a run resumed from a checkpoint
  continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..engine.models import load_base, load_motion_adapter, resolve_device
from ..engine.temporal_norm import use_per_frame_temporal_norm
from .config import TrainConfig
from .data import Batches, find_clips, prepare_videos

log = logging.getLogger(__name__)

# AnimateDiff v3's training noise schedule (configs/inference/inference-v3.yaml noise_scheduler_kwargs).
NOISE_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "linear",
    "steps_offset": 1,
    "clip_sample": False,
}
_PRECISION = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Frozen:
    """The frozen text-to-video model the encoder learns to steer."""

    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    unet: torch.nn.Module  # UNetMotionModel
    unet2d: torch.nn.Module | None  # for initialising the encoder (dropped after)


def load_frozen(config: TrainConfig, device: torch.device, dtype: torch.dtype, data_dir: Path) -> Frozen:
    from diffusers import UNetMotionModel

    from ..weights.refs import WeightRef

    section = config.model
    base_ref, adapter_ref = section.base, section.motion_adapter
    if section.is_tiny:
        from ..engine.tiny import build_tiny_model

        root = build_tiny_model(data_dir / "models" / "tiny")
        base_ref, adapter_ref = WeightRef(str(root / "base")), WeightRef(str(root / "motion_adapter"))
    base = load_base(section, base_ref, data_dir, dtype)
    adapter = load_motion_adapter(adapter_ref, "motion adapter", section, data_dir, dtype)
    unet = UNetMotionModel.from_unet2d(base["unet"], adapter).to(dtype)
    use_per_frame_temporal_norm(unet)  # as AnimateDiff was trained, and as the server runs it
    for module in (base["vae"], base["text_encoder"], unet):
        module.to(device).eval().requires_grad_(False)
    base["vae"].enable_slicing()  # encode a clip's frames one at a time: the VAE's peak stays one frame's
    return Frozen(base["vae"], base["text_encoder"], base["tokenizer"], unet, base["unet"])


def full_size_frozen(device: torch.device, dtype: torch.dtype) -> Frozen:
    """The full-size architecture with random weights (benchmarks: the real model's speed and memory)."""
    from diffusers import UNetMotionModel

    from ..engine.full_size import build_full_size_parts

    parts = build_full_size_parts(torch.device("cpu"), torch.float32)
    unet = UNetMotionModel.from_unet2d(parts["unet2d"], parts["adapter"])
    use_per_frame_temporal_norm(unet)
    for module in (parts["vae"], parts["text_encoder"], unet):
        module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return Frozen(parts["vae"], parts["text_encoder"], parts["tokenizer"], unet, parts["unet2d"])


def new_encoder(config: TrainConfig, frozen: Frozen):
    from diffusers import SparseControlNetModel
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    init_from = config["encoder"]["init_from"]
    if init_from:
        encoder = SparseControlNetModel.from_pretrained(Path(init_from).expanduser(), torch_dtype=torch.float32)
    else:
        from_unet = SparseControlNetModel.from_unet(
            frozen.unet2d.float(),
            conditioning_embedding_out_channels=tuple(config["encoder"]["conditioning_embedding_out_channels"]),
            conditioning_channels=3,
        )
        # from_unet builds the RGB-type (latent) condition input; depth images go in as pixels, through
        # ControlNet's small conv stack (as the scribble encoder): same config otherwise, UNet weights copied.
        settings = {k: v for k, v in from_unet.config.items() if not k.startswith("_")}  # "_use_default_values"
        encoder = SparseControlNetModel.from_config(
            {**settings, "use_simplified_condition_embedding": False, "concat_conditioning_mask": True}
        )
        missing, unexpected = encoder.load_state_dict(from_unet.state_dict(), strict=False)
        assert all(k.startswith("controlnet_cond_embedding.") for k in missing + unexpected), (missing, unexpected)
        del from_unet
        if config["encoder"]["temporal_init"] == "motion_module":
            copied = copy_motion_weights(frozen.unet, encoder)
            log.info("encoder temporal layers: %d tensors from the v3 motion module where shapes match", copied)
        else:
            with torch.no_grad():  # temporal layers start as identities, as AnimateDiff's zero_initialize
                for module in encoder.modules():
                    if isinstance(module, AnimateDiffTransformer3D):
                        module.proj_out.weight.zero_()
                        module.proj_out.bias.zero_()
    use_per_frame_temporal_norm(encoder)
    return encoder.float()


def copy_motion_weights(unet: torch.nn.Module, encoder: torch.nn.Module) -> int:
    """The UNet's (v3) motion-module weights into the encoder's temporal layers, wherever a tensor of the same
    name and shape exists (the encoder's modules have one temporal attention, v3's two); returns the count."""
    copied = 0
    with torch.no_grad():
        for block, source_block in zip(encoder.down_blocks, unet.down_blocks, strict=True):
            for module, source in zip(block.motion_modules, source_block.motion_modules, strict=False):
                theirs = source.state_dict()
                for name, tensor in module.state_dict().items():
                    if name in theirs and theirs[name].shape == tensor.shape:
                        tensor.copy_(theirs[name])
                        copied += 1
    return copied


class Trainer:
    def __init__(self, config: TrainConfig, data_dir: Path | None = None, frozen: Frozen | None = None):
        """`frozen`: an already built frozen model (benchmarks); None: load what config.model names."""
        from diffusers import DDPMScheduler

        self.config = config
        train = config["train"]
        self.device = resolve_device(train["device"])
        self.precision = _PRECISION[train["mixed_precision"]]
        self.out = config.output_dir
        self.out.mkdir(parents=True, exist_ok=True)
        data_dir = Path(data_dir or self.out / "cache")
        data = config["data"]
        if data["videos"]:
            prepare_videos(
                Path(data["videos"]),
                Path(data["clips"]),
                data["depth_model"],
                data["frames"],
                data["video_stride"],
                self.device,
                data["default_caption"],
            )
        self.clips = find_clips(Path(data["clips"]).expanduser(), data["frames"], data["default_caption"])
        frozen_dtype = self.precision if self.device.type != "cpu" else torch.float32
        self.frozen = frozen or load_frozen(config, self.device, frozen_dtype, data_dir)
        with torch.random.fork_rng(devices=[]):  # the fresh layers' initialisation repeats with the seed
            torch.manual_seed(train["seed"])
            self.encoder = new_encoder(config, self.frozen).to(self.device)
        self.frozen.unet2d = None  # only needed to initialise the encoder: give its memory back
        self.encoder.train()
        if train["gradient_checkpointing"]:
            self.encoder.enable_gradient_checkpointing()
            self.frozen.unet.enable_gradient_checkpointing()
        self.scheduler = DDPMScheduler(**NOISE_SCHEDULE)
        self.optimizer = self._optimizer()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == torch.float16)
        self.ema = None
        if train["ema_decay"] > 0:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.encoder.parameters(), decay=train["ema_decay"])
        self.step = 0
        optim = config["optim"]
        self.batches = Batches(
            self.clips,
            config["data"],
            config["masks"],
            optim["batch_size"],
            optim["gradient_accumulation"],
            train["seed"],
            self.scheduler.config.num_train_timesteps,
            train["steps"],
        )

    def _optimizer(self):
        optim = self.config["optim"]
        params = [p for p in self.encoder.parameters() if p.requires_grad]
        if optim["adam_8bit"]:
            try:
                import bitsandbytes as bnb
            except ImportError:
                raise RuntimeError("[optim] adam_8bit needs bitsandbytes: pip install bitsandbytes (CUDA)") from None
            return bnb.optim.AdamW8bit(params, lr=optim["learning_rate"], weight_decay=optim["weight_decay"])
        return torch.optim.AdamW(params, lr=optim["learning_rate"], weight_decay=optim["weight_decay"])

    @torch.no_grad()
    def _encode_text(self, captions: list[str]) -> torch.Tensor:
        tok = self.frozen.tokenizer(
            captions,
            padding="max_length",
            max_length=self.frozen.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return self.frozen.text_encoder(tok.input_ids.to(self.device))[0]

    def batch(self, step: int, micro: int = 0) -> dict[str, torch.Tensor]:
        """Everything random about one micro-batch of `step` (data.Batches)."""
        return self.batches.draw(step, micro)

    def loss(self, batch: dict) -> torch.Tensor:
        vae, dev = self.frozen.vae, self.device
        rgb = batch["rgb"].to(dev)
        b, f = rgb.shape[:2]
        with torch.no_grad():
            pixels = (rgb.flatten(0, 1) * 2 - 1).to(vae.dtype)
            latents = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor  # mode: no hidden RNG
            latents = latents.unflatten(0, (b, f)).permute(0, 2, 1, 3, 4).float()  # (B, 4, F, h, w)
            text = self._encode_text(batch["captions"]).repeat_interleave(f, dim=0)
        noise, t = batch["noise"].to(dev), batch["timesteps"].to(dev)
        noisy = self.scheduler.add_noise(latents, noise, t)
        mask = batch["mask"].to(dev)[:, None, :, None, None]  # (B, 1, F, 1, 1)
        cond = batch["cond"].to(dev).permute(0, 2, 1, 3, 4) * mask  # zero images where unconditioned
        full_mask = mask.expand(-1, 1, -1, *cond.shape[-2:])
        with torch.autocast(dev.type, dtype=self.precision, enabled=self.precision != torch.float32):
            down, mid = self.encoder(
                noisy,
                t,
                encoder_hidden_states=text,
                controlnet_cond=cond,
                conditioning_mask=full_mask,
                return_dict=False,
            )
            pred = self.frozen.unet(
                noisy.to(self.frozen.unet.dtype),
                t,
                encoder_hidden_states=text.to(self.frozen.unet.dtype),
                down_block_additional_residuals=[d.to(self.frozen.unet.dtype) for d in down],
                mid_block_additional_residual=mid.to(self.frozen.unet.dtype),
            ).sample
        return F.mse_loss(pred.float(), noise.float())

    def train_step(self, micro_batches=None) -> float:
        """One optimizer step; `micro_batches`: its micro-batches already drawn (by a DataLoader), else drawn here."""
        optim = self.config["optim"]
        accumulation = optim["gradient_accumulation"]
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(accumulation):
            batch = micro_batches[micro] if micro_batches is not None else self.batch(self.step, micro)
            loss = self.loss(batch) / accumulation
            self.scaler.scale(loss).backward()
            total += float(loss.detach())
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.encoder.parameters(), optim["max_grad_norm"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.step(self.encoder.parameters())
        self.step += 1
        return total

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        folder = self.out / "checkpoints" / f"step-{self.step:07d}"
        tmp = folder.with_name(folder.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        self.encoder.save_pretrained(tmp / "encoder")
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }
        torch.save(state, tmp / "training_state.pt")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        return folder

    def resume(self, folder: Path) -> None:
        from diffusers import SparseControlNetModel

        folder = Path(folder)
        state = torch.load(folder / "training_state.pt", map_location="cpu", weights_only=True)
        saved = SparseControlNetModel.from_pretrained(folder / "encoder", torch_dtype=torch.float32)
        self.encoder.load_state_dict(saved.state_dict())
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.step = state["step"]
        log.info("resumed from %s at step %d", folder, self.step)

    def _loader(self, steps: int):
        """The micro-batches of steps self.step..steps-1, drawn ahead by [data] workers processes (0: here)."""
        accumulation = self.config["optim"]["gradient_accumulation"]
        workers = self.config["data"]["workers"]
        loader = torch.utils.data.DataLoader(
            self.batches,
            sampler=range(self.step * accumulation, steps * accumulation),
            batch_size=None,  # each item is already one micro-batch
            num_workers=workers,
            prefetch_factor=2 if workers else None,
            persistent_workers=False,
        )
        return iter(loader)

    def latest_checkpoint(self) -> Path | None:
        found = sorted((self.out / "checkpoints").glob("step-*[0-9]"))
        return found[-1] if found else None

    def save_encoder(self) -> Path:
        """The trained encoder (the EMA weights when on) as a folder the server loads for the modality."""
        folder = self.out / "encoder"
        if self.ema is not None:
            self.ema.store(self.encoder.parameters())
            self.ema.copy_to(self.encoder.parameters())
        shutil.rmtree(folder, ignore_errors=True)
        self.encoder.save_pretrained(folder)
        if self.ema is not None:
            self.ema.restore(self.encoder.parameters())
        return folder

    # -- the loop ------------------------------------------------------------------------------------------------

    def run(self, steps: int | None = None, resume: bool = True) -> Path:
        from tqdm import tqdm

        train = self.config["train"]
        steps = train["steps"] if steps is None else steps
        if resume and (latest := self.latest_checkpoint()) is not None:
            self.resume(latest)
        (self.out / "train.json").write_text(json.dumps(self.config.raw, indent=2, default=str))
        writer = _summary_writer(self.out / "logs")
        losses = (self.out / "losses.csv").open("a", newline="")
        log_csv = csv.writer(losses)
        started, first = time.perf_counter(), self.step
        batch_size = self.config["optim"]["batch_size"]
        clips_per_step = batch_size * self.config["optim"]["gradient_accumulation"]
        try:
            with tqdm(
                total=steps, initial=self.step, unit="step", desc=f"training {self.config['encoder']['modality']}"
            ) as bar:
                micro_batches = self._loader(steps)
                while self.step < steps:
                    loss = self.train_step([next(micro_batches) for _ in range(clips_per_step // batch_size)])
                    if not math.isfinite(loss):
                        raise FloatingPointError(f"the loss became {loss} at step {self.step}: lower the learning rate")
                    log_csv.writerow([self.step, f"{loss:.6f}"])
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}")
                    if self.step % train["log_every"] == 0 or self.step == steps:
                        seconds = time.perf_counter() - started
                        if writer is not None:
                            writer.add_scalar("train/loss", loss, self.step)
                            writer.add_scalar(
                                "train/clips_per_s", (self.step - first) * clips_per_step / seconds, self.step
                            )
                        losses.flush()
                    if self.step % train["checkpoint_every"] == 0 and self.step < steps:
                        self.save_checkpoint()
        finally:
            losses.close()
            if writer is not None:
                writer.close()
        self.save_checkpoint()
        folder = self.save_encoder()
        log.info(
            "trained %d steps in %.1f s; encoder saved in %s", self.step - first, time.perf_counter() - started, folder
        )
        return folder


def _summary_writer(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra; losses.csv has the curve either way
        log.warning("tensorboard is not installed: logging the loss to losses.csv only (pip install tensorboard)")
        return None
    return SummaryWriter(str(folder))
