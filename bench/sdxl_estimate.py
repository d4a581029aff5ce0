"""Counts behind docs/sdxl_estimate.md: parameters, forward FLOPs and saved activations of the mumu-sdxl
model, measured on PyTorch's meta device (shapes only, no weights, no GPU, seconds on a laptop).

    python bench/sdxl_estimate.py

FLOPs: torch.utils.flop_counter.FlopCounterMode over one forward (matmuls, convolutions, SDPA).
Activations: bytes of every tensor autograd saves for backward (saved_tensors_hooks), batch 1, bf16.
The SDXL UNet and Idefics2-8B configs are written out here (their published config.json values), since
no hub is reachable offline.
"""

from __future__ import annotations

import json

import torch
from torch.utils.flop_counter import FlopCounterMode

SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    block_out_channels=[320, 640, 1280], layers_per_block=2, transformer_layers_per_block=[1, 2, 10],
    attention_head_dim=[5, 10, 20], cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)
IDEFICS2_8B = dict(
    vision_config=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                       patch_size=14, image_size=980),
    perceiver_config=dict(hidden_size=4096, resampler_n_latents=64, resampler_depth=3, resampler_n_heads=16,
                          resampler_head_dim=96, num_key_value_heads=4),
    text_config=dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=32003, max_position_embeddings=32768),
)
TEXT_TOKENS = 256  # encoder.max_text_tokens: 3 images x (64 + 2) + ~58 text tokens
CROP_SIDE = 980  # Idefics2's longest_edge: one crop = 70 x 70 patches of 14 px
BF16 = 2


def count(module, trainable_only=False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def fwd_flops(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def saved_bytes(fn) -> int:
    """Activation bytes saved for backward: weights (and views of them) excluded, each tensor once."""
    total, seen = 0, set()

    def pack(t):
        nonlocal total
        base = t._base if t._base is not None else t
        if not isinstance(base, torch.nn.Parameter) and id(base) not in seen:
            seen.add(id(base))
            total += base.numel() * base.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def unet_numbers(lora_r: int = 32) -> dict:
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET).to(torch.bfloat16)
    full_params = count(unet)
    lat = torch.empty(1, 4, 128, 128, device="meta", dtype=torch.bfloat16)
    ctx = torch.empty(1, TEXT_TOKENS, 2048, device="meta", dtype=torch.bfloat16)
    added = {"text_embeds": torch.empty(1, 1280, device="meta", dtype=torch.bfloat16),
             "time_ids": torch.empty(1, 6, device="meta", dtype=torch.bfloat16)}
    t = torch.tensor([500], device="meta")
    run = lambda: unet(lat, t, encoder_hidden_states=ctx, added_cond_kwargs=added)  # noqa: E731
    out = {"params": full_params, "forward_flops": fwd_flops(run), "saved_full": saved_bytes(run)}
    unet.enable_gradient_checkpointing()
    unet.train()
    out["saved_ckpt"] = saved_bytes(run)
    unet.disable_gradient_checkpointing()
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=lora_r, lora_alpha=lora_r, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    out["lora_params"] = count(unet, trainable_only=True)
    out["saved_lora"] = saved_bytes(run)  # frozen weights: inputs of frozen linears need not be saved
    return out


def encoder_numbers(lora_r: int = 16) -> dict:
    from peft import LoraConfig, inject_adapter_in_model
    from transformers import Idefics2Config, Idefics2Model

    cfg = Idefics2Config(**IDEFICS2_8B)
    with torch.device("meta"):
        model = Idefics2Model(cfg).to(torch.bfloat16)
    out = {"params": count(model), "vision_params": count(model.vision_model), "text_params": count(model.text_model),
           "projection_params": count(model.connector.modality_projection)}
    n_patch = (CROP_SIDE // 14) ** 2
    # SigLIP tower, counted by formula (its padding-mask helper calls .item(), which meta tensors refuse):
    # per layer 2*N*(4 d^2 + 2 d I) for the projections and MLP + 4*N^2*d for QK^T and AV; plus the patch conv.
    v = IDEFICS2_8B["vision_config"]
    d, i_, layers = v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"]
    out["vision_flops_per_crop"] = layers * (2 * n_patch * (4 * d * d + 2 * d * i_) + 4 * n_patch**2 * d) \
        + 2 * n_patch * d * 3 * 14 * 14
    feats = torch.empty(1, n_patch, 1152, device="meta", dtype=torch.bfloat16)
    out["projection_flops_per_crop"] = fwd_flops(lambda: model.connector.modality_projection(feats))
    model.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=lora_r, lora_alpha=2 * lora_r,
                                       target_modules=r"text_model\..*\.(q_proj|k_proj|v_proj|o_proj)"), model)
    out["text_lora_params"] = count(model, trainable_only=True)
    # Mistral forward by formula (its mask helpers also call .item()): 2 FLOPs per weight per token for
    # every non-embedding weight + 4*T^2*d per layer for QK^T and AV.
    t_cfg = IDEFICS2_8B["text_config"]
    non_emb = out["text_params"] - t_cfg["vocab_size"] * t_cfg["hidden_size"]
    out["text_flops"] = 2 * non_emb * TEXT_TOKENS + t_cfg["num_hidden_layers"] * 4 * TEXT_TOKENS**2 * t_cfg["hidden_size"]
    # Saved for backward per token and layer (bf16): residual/norm inputs, q, k, v, attention output, o_proj
    # input (~8 x d, k/v are 1/4 size with 8 kv heads) + gate, up, act(gate)*up (3 x intermediate).
    per_tok_layer = (8 * t_cfg["hidden_size"] + 3 * t_cfg["intermediate_size"]) * BF16
    out["text_saved_lora"] = per_tok_layer * TEXT_TOKENS * t_cfg["num_hidden_layers"]
    return out


if __name__ == "__main__":
    print(json.dumps({"unet": unet_numbers(), "encoder": encoder_numbers()}, indent=2))
