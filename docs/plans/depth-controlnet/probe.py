import sys, json, torch, tempfile, pathlib
sys.path.insert(0, "/work/main")
from diffusers import ControlNetModel, UNet2DConditionModel, SparseControlNetModel, UNetMotionModel
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING, convert_controlnet_checkpoint, infer_diffusers_model_type
from tests.original_layout import _unet_prefixes, _by_prefix, _RESNET_TO_LDM
from server.weights.convert import identify
import server.engine.tiny as tiny
print("UNetMotionModel subclass of UNet2DConditionModel:", issubclass(UNetMotionModel, UNet2DConditionModel))
torch.manual_seed(0)
unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=tiny.BLOCK_OUT_CHANNELS,
    layers_per_block=1, down_block_types=("CrossAttnDownBlock2D","DownBlock2D"), up_block_types=("UpBlock2D","CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8,8,8,8))
print("cfg", {k: v for k, v in cn.config.items() if not k.startswith("_")})
sd = cn.state_dict()
print("n keys", len(sd), "identify(diffusers layout) =", identify(sd))
print([k for k in sd if not k.startswith(("down_blocks", "mid_block"))])
# reverse mapping
top = {k: v for k, v in DIFFUSERS_TO_LDM_MAPPING["controlnet"]["layers"].items()}
pre = {p: v for p, v in _unet_prefixes(unet.config).items() if p.startswith(("down_blocks", "mid_block"))}
ldm = {}
for k, v in sd.items():
    if k in top: name = top[k]
    elif k.startswith("controlnet_cond_embedding.blocks."):
        i, rest = k[len("controlnet_cond_embedding.blocks."):].split(".", 1); name = f"input_hint_block.{2*(int(i)+1)}.{rest}"
    elif k.startswith("controlnet_down_blocks."):
        i, rest = k[len("controlnet_down_blocks."):].split(".", 1); name = f"zero_convs.{i}.0.{rest}"
    elif k.startswith("controlnet_mid_block."): name = "middle_block_out.0." + k.split(".",1)[1]
    else:
        p, (lp, res) = _by_prefix(k, pre); rest = k[len(p):]
        if res:
            h, t = rest.split(".", 1); rest = f"{_RESNET_TO_LDM[h]}.{t}"
        name = lp + rest
    ldm["control_model." + name] = v.clone()
print("identify(ldm) =", identify(ldm), "| diffusers infer:", infer_diffusers_model_type(ldm))
back = convert_controlnet_checkpoint(dict(ldm), cn.config)
print("round trip keys equal:", set(back) == set(sd), "values equal:", all(torch.equal(back[k], sd[k]) for k in sd))
d = pathlib.Path(tempfile.mkdtemp()); cn.save_config(d)
import os
m = ControlNetModel.from_single_file(ldm, config=str(d), local_files_only=True, torch_dtype=torch.float32)
print("from_single_file ok, equal:", all(torch.equal(m.state_dict()[k], sd[k]) for k in sd))
# prefixless variant
ldm2 = {k[len("control_model."):]: v for k, v in ldm.items()}
print("prefixless: identify", identify(ldm2), "infer:", infer_diffusers_model_type(ldm2))
m2 = ControlNetModel.from_single_file(ldm2, config=str(d), local_files_only=True)
print("prefixless from_single_file equal:", all(torch.equal(m2.state_dict()[k], sd[k]) for k in sd))
sc = SparseControlNetModel.from_pretrained("/tmp/r16/tinyroot/encoders/depth") if pathlib.Path("/tmp/r16/tinyroot/encoders/depth").exists() else None
from server.weights.convert import _validate, _from_single_file
_validate(ControlNetModel, ldm, d, "", "ControlNet", pathlib.Path("x.pth")); print("_validate LDM ok")
_validate(ControlNetModel, sd, d, "", "ControlNet", pathlib.Path("x.safetensors")); print("_validate diffusers-layout ok")
bad = dict(ldm); bad.pop("control_model.zero_convs.0.0.weight")
try: _validate(ControlNetModel, bad, d, "", "ControlNet", pathlib.Path("x.pth"))
except Exception as e: print("missing ->", str(e)[:160])
m3 = _from_single_file(ControlNetModel, ldm, d, "", torch.float16, "ControlNet", pathlib.Path("x.pth")); print("fp16", m3.dtype)
