import sys, torch, numpy as np
sys.path.insert(0, "/work/main")
from pathlib import Path
from PIL import Image
from server.engine.tiny import build_tiny_model
from diffusers import (AnimateDiffControlNetPipeline, AnimateDiffSparseControlNetPipeline, ControlNetModel, MotionAdapter,
    SparseControlNetModel, DDIMScheduler, UNet2DConditionModel, UNetMotionModel)
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
torch.set_num_threads(1); torch.manual_seed(0)
root = build_tiny_model(Path("/tmp/r16/tiny"))
unet2d = UNet2DConditionModel.from_pretrained(root / "base/unet")
g = torch.Generator().manual_seed(5)
cn = ControlNetModel.from_unet(unet2d, conditioning_embedding_out_channels=(8, 8, 8, 8))
with torch.no_grad():
    for p in cn.parameters():
        if torch.count_nonzero(p) == 0: p.copy_(torch.randn(p.shape, generator=g) * 0.02)
F, W, H, steps, gs = 4, 64, 64, 3, 7.5
rng = np.random.default_rng(0)
frames = [Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)) for _ in range(F)]
pipe = AnimateDiffControlNetPipeline.from_pretrained(root / "base", motion_adapter=MotionAdapter.from_pretrained(root / "motion_adapter"),
    controlnet=cn, scheduler=DDIMScheduler.from_pretrained(root / "base", subfolder="scheduler"))
pipe.set_progress_bar_config(disable=True)
kw = dict(num_frames=F, width=W, height=H, num_inference_steps=steps, guidance_scale=gs, output_type="np",
          controlnet_conditioning_scale=0.8, control_guidance_start=0.0, control_guidance_end=0.67)
ref = pipe(prompt="a cat", negative_prompt="", conditioning_frames=frames, generator=torch.Generator().manual_seed(1), **kw).frames[0]
# hand loop, as windowed.py would do it (one window)
@torch.no_grad()
def mine(sequential):
    pe, ne = pipe.encode_prompt("a cat", "cpu", 1, True, "")
    embeds = torch.cat([ne, pe]).repeat_interleave(F, dim=0)
    cond = pipe.control_video_processor.preprocess_video(frames, height=H, width=W).to(torch.float32)  # (1,3,F,H,W)
    cond = cond.permute(0, 2, 1, 3, 4).flatten(0, 1).repeat_interleave(1, dim=0)
    pipe.scheduler.set_timesteps(steps)
    ts = pipe.scheduler.timesteps
    lat = pipe.prepare_latents(1, 4, F, H, W, embeds.dtype, "cpu", torch.Generator().manual_seed(1), None)
    for i, t in enumerate(ts):
        keep = 1.0 - float(i / len(ts) < 0.0 or (i + 1) / len(ts) > 0.67)
        def den(x, emb, c):
            xi = x.transpose(1, 2).reshape(-1, *x.shape[1:2], *x.shape[3:])
            d, m = pipe.controlnet(xi, t, encoder_hidden_states=emb, controlnet_cond=c, conditioning_scale=0.8 * keep, return_dict=False)
            return pipe.unet(x, t, encoder_hidden_states=emb, down_block_additional_residuals=d, mid_block_additional_residual=m).sample
        if sequential:
            x = pipe.scheduler.scale_model_input(lat, t)
            u, tx = (den(x, h, cond) for h in embeds.chunk(2))
        else:
            x = pipe.scheduler.scale_model_input(torch.cat([lat] * 2), t)
            u, tx = den(x, embeds, torch.cat([cond] * 2)).chunk(2)
        lat = pipe.scheduler.step(u + gs * (tx - u), t, lat).prev_sample
        MINE.append(lat.clone())
    return pipe.video_processor.postprocess_video(pipe.decode_latents(lat), output_type="np")[0]
MINE = []
a = mine(False); b = mine(True)
print("joint CFG == pipeline:", np.array_equal(a, ref), "max diff", np.abs(a - ref).max())
print("sequential CFG == pipeline:", np.array_equal(b, ref), "max diff", np.abs(b - ref).max())
# residual layout vs SparseCtrl
sc = SparseControlNetModel.from_pretrained(root / "encoders/depth")
x = torch.randn(2, 4, F, 8, 8); emb = torch.randn(2 * F, 77, 32)
d1, m1 = sc(x, 10, encoder_hidden_states=emb, controlnet_cond=torch.rand(2, 3, F, 64, 64), conditioning_mask=torch.ones(2, 1, F, 64, 64), return_dict=False)
d2, m2 = cn(x.transpose(1, 2).reshape(-1, 4, 8, 8), 10, encoder_hidden_states=emb, controlnet_cond=torch.rand(2 * F, 3, 64, 64), return_dict=False)
print("shapes sparse", [tuple(r.shape) for r in d1], tuple(m1.shape)); print("shapes dense ", [tuple(r.shape) for r in d2], tuple(m2.shape))
# debug: per-step latents
seen = []
def cb(p, i, t, kw_):
    seen.append(kw_["latents"].clone()); return {}
pipe(prompt="a cat", negative_prompt="", conditioning_frames=frames, generator=torch.Generator().manual_seed(1), callback_on_step_end=cb, **{**kw, "output_type": "latent"})
ref2 = pipe(prompt="a cat", negative_prompt="", conditioning_frames=frames, generator=torch.Generator().manual_seed(1), **kw).frames[0]
print("pipeline repeat equal:", np.array_equal(ref, ref2))
pe, ne = pipe.encode_prompt("a cat", "cpu", 1, True, "")
lat0 = pipe.prepare_latents(1, 4, F, H, W, pe.dtype, "cpu", torch.Generator().manual_seed(1), None)
print("n seen", len(seen))

for k in range(3): print('step', k, (MINE[k]-seen[k]).abs().max().item(), (MINE[3+k]-seen[k]).abs().max().item())
