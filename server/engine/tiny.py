"""A tiny random-weight model of the real classes, written offline as real diffusers folders.

`--model tiny` and the tests use it: the same classes as Stable Diffusion 1.5 + AnimateDiff v3 + SparseCtrl,
with a few channels each, so that everything downstream (loading, the pipeline, the HTTP contract, video)
runs for real on a CPU in seconds. Its output is structured noise, never a preview; the server says so.

Layout written (the same as the real weights' folders, see docs/weights.md):
    ROOT/base/{unet,vae,text_encoder,tokenizer,scheduler}/ + model_index.json
    ROOT/motion_adapter/, ROOT/motion_adapter_draft/ (a second random one with a middle-block module, as AnimateLCM)
    ROOT/encoders/{lineart,rgb,depth}/
    ROOT/controlnets/depth/ (a per-frame ControlNet made from the tiny UNet, as lllyasviel's are from SD1.5's;
    built apart, with its own stamp and seed, so the parts above and their parity data never change for it)
    ROOT/ip_adapter/models/ (an IP-Adapter, plain and plus, and its image encoder in h94/IP-Adapter's layout;
    built apart likewise)
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# Bump when the tiny architecture changes, so a cached folder from an older build is rebuilt.
TINY_VERSION = "4"
CROSS_ATTENTION_DIM = 32
BLOCK_OUT_CHANNELS = (32, 64)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table (from the published algorithm)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def write_tokenizer(folder: Path) -> int:
    """Write a CLIP BPE tokenizer that covers every byte (so any prompt tokenizes); returns vocab size."""
    from transformers import CLIPTokenizer

    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    # A handful of merges so the BPE does real merging on common English.
    merges = ["t h", "th e</w>", "a n", "i n", "e r</w>", "o n</w>", "a r", "e d</w>"]
    for m in merges:
        vocab_list.append("".join(m.split(" ")))
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], model_max_length=77)
    tokenizer.save_pretrained(folder)
    return len(vocab)


def _up_to_date(stamp: Path, version: str) -> bool:
    try:
        return json.loads(stamp.read_text()).get("version") == version
    except (OSError, ValueError):
        return False


def _build_folder(folder: Path) -> Path:
    """A fresh temporary folder beside `folder`, unique to this build: two processes building the same tiny
    parts at once (Ray slots of nodes sharing one data folder) must never write into or delete each other's."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{folder.name}.", suffix=".partial", dir=folder.parent))


def _publish(tmp: Path, folder: Path, stamp_name: str, version: str) -> None:
    """Rename a finished build into place. When another process published the same build first, its folder is
    as good as ours: ours is dropped."""
    try:
        tmp.rename(folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _up_to_date(folder / stamp_name, version):
            raise


def _randomise_zero_params(module: torch.nn.Module, generator: torch.Generator) -> None:
    """ControlNet-style zero-initialised layers make a random model ignore its conditions; fill them."""
    with torch.no_grad():
        for p in module.parameters():
            if p.numel() and torch.count_nonzero(p) == 0:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)


def build_tiny_model(root: Path, seed: int = 0) -> Path:
    """Write the tiny model under `root` (idempotent: an up-to-date folder is kept). Returns `root`.

    The parts are drawn in a fixed order from the seeded RNGs (base, motion modules, encoders): the weights,
    and so the parity data that depends on them, stay what TINY_VERSION says."""
    root = Path(root)
    if _up_to_date(root / "tiny_model.json", TINY_VERSION):
        return root
    shutil.rmtree(root, ignore_errors=True)
    tmp = _build_folder(root)
    log.info("building the tiny random-weight model in %s", root)

    generator = torch.Generator().manual_seed(seed)
    _tiny_base(tmp, seed).save_pretrained(tmp / "base")
    _tiny_motion_modules(tmp, generator, seed)
    _tiny_encoders(tmp, generator)
    (tmp / "tiny_model.json").write_text(json.dumps({"version": TINY_VERSION, "seed": seed}))
    _publish(tmp, root, "tiny_model.json", TINY_VERSION)
    return root


def _tiny_base(tmp: Path, seed: int):
    """SD1.5's layout in miniature: UNet, VAE, CLIP text encoder with our BPE tokenizer, SD1.5's scheduler.
    Longer than our 60-line rule on purpose: one listing of every shape, read top to bottom."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab_size = write_tokenizer(tmp / "tokenizer-tmp")
    tokenizer = CLIPTokenizer.from_pretrained(tmp / "tokenizer-tmp")
    shutil.rmtree(tmp / "tokenizer-tmp")

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=BLOCK_OUT_CHANNELS,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    # Four VAE blocks: the same 8x downscale as SD1.5, so image sizes mean the same as on the real model.
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=CROSS_ATTENTION_DIM,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    # SD1.5 ships a PNDM config carrying keys (skip_prk_steps, set_alpha_to_one) that other schedulers lack.
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _tiny_motion_modules(tmp: Path, generator: torch.Generator, seed: int) -> None:
    """The v3-like motion module, and a draft one standing in for AnimateLCM's (with a middle-block module)."""
    from diffusers import MotionAdapter

    adapter = MotionAdapter(
        block_out_channels=BLOCK_OUT_CHANNELS,
        motion_layers_per_block=1,
        motion_norm_num_groups=8,
        motion_num_attention_heads=2,
        motion_max_seq_length=32,
        use_motion_mid_block=False,  # as v3_sd15_mm (AnimateDiff's inference-v3.yaml: motion_module_mid_block false)
    )
    _randomise_zero_params(adapter, generator)
    adapter.save_pretrained(tmp / "motion_adapter")
    # The draft's down/up modules are drawn as before version 4 added the middle one, which is drawn from RNGs
    # of its own, so every other weight of the tiny model stays what it was.
    draft = MotionAdapter(**adapter.config)
    _randomise_zero_params(draft, generator)
    with torch.random.fork_rng():
        torch.manual_seed(seed + 1)
        draft_with_mid = MotionAdapter(**{**adapter.config, "use_motion_mid_block": True})
    draft_with_mid.load_state_dict(draft.state_dict(), strict=False)
    _randomise_zero_params(draft_with_mid.mid_block, torch.Generator().manual_seed(seed + 1))
    draft_with_mid.save_pretrained(tmp / "motion_adapter_draft")


def _tiny_encoders(tmp: Path, generator: torch.Generator) -> None:
    """One SparseCtrl encoder per modality, shaped like the released ones."""
    from diffusers import SparseControlNetModel

    common = dict(
        in_channels=4,
        block_out_channels=BLOCK_OUT_CHANNELS,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
        motion_num_attention_heads=2,
        motion_max_seq_length=32,
        concat_conditioning_mask=True,
    )
    encoder_kinds = {
        # Like the released scribble encoder: image pixels through a conv embedding.
        "lineart": dict(
            conditioning_channels=3,
            use_simplified_condition_embedding=False,
            conditioning_embedding_out_channels=(8, 8, 8, 8),
        ),
        # Like the released RGB encoder: VAE latents through a single conv.
        "rgb": dict(conditioning_channels=4, use_simplified_condition_embedding=True),
        "depth": dict(
            conditioning_channels=3,
            use_simplified_condition_embedding=False,
            conditioning_embedding_out_channels=(8, 8, 8, 8),
        ),
    }
    for modality, kind in encoder_kinds.items():
        encoder = SparseControlNetModel(**common, **kind)
        _randomise_zero_params(encoder, generator)
        encoder.save_pretrained(tmp / "encoders" / modality)


# Bump when the tiny ControlNet changes; apart from TINY_VERSION, whose weights it must not move.
TINY_CONTROLNET_VERSION = "1"


def build_tiny_controlnet(folder: Path, base_unet: Path, seed: int = 7) -> Path:
    """A ControlNetModel initialised from the tiny base's UNet (ControlNet's own recipe), its zero convolutions
    filled so that it steers; idempotent like build_tiny_model. Drawn under a forked RNG with its own seed."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    folder = Path(folder)
    if _up_to_date(folder / "tiny_controlnet.json", TINY_CONTROLNET_VERSION):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    tmp = _build_folder(folder)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_pretrained(base_unet)
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 8, 8))
    _randomise_zero_params(controlnet, torch.Generator().manual_seed(seed))
    controlnet.save_pretrained(tmp)
    (tmp / "tiny_controlnet.json").write_text(json.dumps({"version": TINY_CONTROLNET_VERSION, "seed": seed}))
    _publish(tmp, folder, "tiny_controlnet.json", TINY_CONTROLNET_VERSION)
    return folder


def build_tiny_all(root: Path) -> Path:
    """The tiny model, its depth ControlNet and its IP-Adapter: everything `--model tiny` loads."""
    root = build_tiny_model(root)
    build_tiny_controlnet(root / "controlnets" / "depth", root / "base" / "unet")
    build_tiny_ip_adapter(root / "ip_adapter", root / "base" / "unet")
    return root


def build_tiny_taesd(folder: Path, seed: int = 11, suffix: str = ".safetensors") -> Path:
    """A tiny TAESD decoder (diffusers' AutoencoderTiny, 8 channels where the released one has 64), written as
    the released `taesd_decoder` file is (the decoder's Sequential, Clamp at index 0: previews.taesd_state_dict)
    into `folder` (a models/vae_approx, say); returns the file. `.pth` writes the pickled form ComfyUI ships."""
    from diffusers import AutoencoderTiny

    from .previews import TAESD_DECODER_NAME, taesd_state_dict

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoencoderTiny(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4)
    path = Path(folder) / f"{TAESD_DECODER_NAME}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = taesd_state_dict(model)
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(weights, str(path))
    else:
        torch.save(weights, path)
    return path


# Bump when the tiny IP-Adapter changes; apart from TINY_VERSION, whose weights it must not move.
TINY_IP_ADAPTER_VERSION = "1"
TINY_IMAGE_SIZE, TINY_PATCH = 224, 32  # diffusers' default CLIPImageProcessor (224) fits the tiny image encoder


def build_tiny_ip_adapter(folder: Path, base_unet: Path, seed: int = 13) -> Path:
    """A tiny IP-Adapter in h94/IP-Adapter's layout (docs/weights.md), idempotent like build_tiny_model:
    `models/image_encoder/` (a transformers CLIPVisionModelWithProjection, 16 heads as ViT-H/14 has, so a single
    file of it loads as ComfyUI's clip_vision files do), `models/ip-adapter_sd15.safetensors` (the plain adapter)
    and `models/ip-adapter-plus_sd15.safetensors` (the plus one, a Resampler of 4 layers as the released one), in
    the original key names diffusers' load_ip_adapter converts, shaped for the tiny base's UNet. Drawn under a
    forked RNG with its own seed."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = Path(folder)
    if _up_to_date(folder / "tiny_ip_adapter.json", TINY_IP_ADAPTER_VERSION):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    tmp = _build_folder(folder)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vision = CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            projection_dim=32,
            num_hidden_layers=2,
            num_attention_heads=16,
            hidden_act="gelu",  # as ViT-H/14's (configs/clip_vit_h14), so a single file of it reads the same
            image_size=TINY_IMAGE_SIZE,
            patch_size=TINY_PATCH,
        )
        CLIPVisionModelWithProjection(vision).save_pretrained(tmp / "models" / "image_encoder")
        unet = UNet2DConditionModel.from_pretrained(base_unet)
        plain = random_ip_adapter(unet, "plain", vision.projection_dim)
        save_file(_flat(plain), str(tmp / "models" / "ip-adapter_sd15.safetensors"))
        plus = random_ip_adapter(unet, "plus", vision.hidden_size, plus_dim=64)
        save_file(_flat(plus), str(tmp / "models" / "ip-adapter-plus_sd15.safetensors"))
    (tmp / "tiny_ip_adapter.json").write_text(json.dumps({"version": TINY_IP_ADAPTER_VERSION, "seed": seed}))
    _publish(tmp, folder, "tiny_ip_adapter.json", TINY_IP_ADAPTER_VERSION)
    return folder


def random_ip_adapter(unet, kind: str, image_dim: int, plus_dim: int | None = None) -> dict:
    """A random IP-Adapter for `unet` (a 2-D SD UNet) in h94's original names, nested as its .bin files are:
    plain (`image_dim`: the encoder's projected embedding) or plus (`image_dim`: its hidden size; a Resampler of
    `plus_dim` channels, the cross-attention size by default, as the released one is). The tiny model's and the
    memory benchmark's full-size one (engine/full_size.py)."""
    cross = unet.config.cross_attention_dim
    layers = {}
    for n, hidden in enumerate(_cross_attention_sizes(unet)):
        layers[f"{2 * n + 1}.to_k_ip.weight"] = _linear(hidden, cross)
        layers[f"{2 * n + 1}.to_v_ip.weight"] = _linear(hidden, cross)
    if kind == "plain":
        projection = _plain_projection(image_dim, cross)
    else:
        projection = _plus_projection(image_dim, cross, queries=16, dim=plus_dim or cross)
    return {"image_proj": projection, "ip_adapter": layers}


def _cross_attention_sizes(unet) -> list[int]:
    """The hidden size of each cross-attention of `unet`, in the order diffusers numbers an IP-Adapter's layers
    (1, 3, 5, ...: its attention processors' order, self-attentions skipped)."""
    sizes = []
    for name in unet.attn_processors:
        if not name.endswith("attn1.processor"):
            sizes.append(unet.get_submodule(name.removesuffix(".processor")).to_q.out_features)
    return sizes


def _linear(rows: int, cols: int) -> torch.Tensor:
    return torch.randn(rows, cols) / cols**0.5


def _norm(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return 1 + torch.randn(size) * 0.02, torch.randn(size) * 0.02


def _plain_projection(image_dim: int, cross: int, tokens: int = 4) -> dict:
    """IP-Adapter's ImageProjModel: the image embedding to `tokens` text-sized tokens, layer-normed."""
    proj = {"proj.weight": _linear(cross * tokens, image_dim), "proj.bias": torch.randn(cross * tokens) * 0.02}
    proj["norm.weight"], proj["norm.bias"] = _norm(cross)
    return proj


def _plus_projection(image_dim: int, cross: int, queries: int, dim: int, depth: int = 4) -> dict:
    """IP-Adapter Plus's Resampler (perceiver attention over the encoder's penultimate hidden states), with the
    original names: 64 channels per head as diffusers reads it, `depth` layers as the released adapters have."""
    proj = {"latents": torch.randn(1, queries, dim) / dim**0.5}
    proj |= {"proj_in.weight": _linear(dim, image_dim), "proj_in.bias": torch.zeros(dim)}
    proj |= {"proj_out.weight": _linear(cross, dim), "proj_out.bias": torch.zeros(cross)}
    proj["norm_out.weight"], proj["norm_out.bias"] = _norm(cross)
    for i in range(depth):
        for name in ("norm1", "norm2"):
            proj[f"layers.{i}.0.{name}.weight"], proj[f"layers.{i}.0.{name}.bias"] = _norm(dim)
        proj[f"layers.{i}.0.to_q.weight"] = _linear(dim, dim)
        proj[f"layers.{i}.0.to_kv.weight"] = _linear(2 * dim, dim)
        proj[f"layers.{i}.0.to_out.weight"] = _linear(dim, dim)
        proj[f"layers.{i}.1.0.weight"], proj[f"layers.{i}.1.0.bias"] = _norm(dim)
        proj[f"layers.{i}.1.1.weight"] = _linear(4 * dim, dim)
        proj[f"layers.{i}.1.3.weight"] = _linear(dim, 4 * dim)
    return proj


def _flat(nested: dict) -> dict:
    """h94's .safetensors form: "image_proj.<name>" and "ip_adapter.<name>" (its .bin files nest the two)."""
    return {f"{part}.{name}": t.contiguous() for part, tensors in nested.items() for name, t in tensors.items()}
