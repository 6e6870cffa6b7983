import json
from accelerate import init_empty_weights
from diffusers import ControlNetModel, UNet2DConditionModel
u = UNet2DConditionModel.load_config("/work/main/server/weights/configs/sd15/unet")
keys = ["in_channels","flip_sin_to_cos","freq_shift","down_block_types","only_cross_attention","block_out_channels","layers_per_block",
        "downsample_padding","mid_block_scale_factor","act_fn","norm_num_groups","norm_eps","cross_attention_dim","attention_head_dim",
        "use_linear_projection","class_embed_type","num_class_embeds","upcast_attention","resnet_time_scale_shift","projection_class_embeddings_input_dim"]
with init_empty_weights():
    m = ControlNetModel(**{k: u[k] for k in keys}, conditioning_embedding_out_channels=(16, 32, 96, 256))
print(sum(p.numel() for p in m.parameters()))
m.save_config("/tmp/r16/controlnet_sd15")
print(open("/tmp/r16/controlnet_sd15/config.json").read())
