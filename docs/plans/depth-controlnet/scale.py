import torch
from diffusers import ControlNetModel
torch.manual_seed(0)
cn = ControlNetModel(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), layers_per_block=1,
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8, conditioning_embedding_out_channels=(8, 8, 8, 8))
for p in cn.parameters():
    if torch.count_nonzero(p) == 0: p.data.normal_(0, 0.02)
x = torch.randn(6, 4, 8, 8); e = torch.randn(6, 77, 32); c = torch.rand(6, 3, 64, 64)
with torch.no_grad():
    d1, m1 = cn(x, 10, encoder_hidden_states=e, controlnet_cond=c, conditioning_scale=0.8, return_dict=False)
    d2, m2 = cn(x, 10, encoder_hidden_states=e, controlnet_cond=c, conditioning_scale=torch.full((6, 1, 1, 1), 0.8), return_dict=False)
    w = torch.tensor([0.8, 0.4, 0.0] * 2).view(-1, 1, 1, 1)
    d3, m3 = cn(x, 10, encoder_hidden_states=e, controlnet_cond=c, conditioning_scale=w, return_dict=False)
print("float vs tensor scale equal:", all(torch.equal(a, b) for a, b in zip(d1, d2)) and torch.equal(m1, m2))
print("per-frame: frame1 == 0.5*frame0-scale?", torch.allclose(d3[0][1], d1[0][1] * 0.5), "frame2 zero", d3[0][2].abs().max().item())
