"""Counts behind docs/sdxl_estimate.md and docs/feature_cache.md: FLOPs per training sample of the real profiles
(mumu-sdxl = MUMU's recipe, unimo-g = UNIMO-G's with the MLLM frozen) with and without the feature cache, the
bytes the cache stores per sample, parameters and the activation memory behind the per-GPU estimate.

    python -m bench.sdxl_estimate [--crop-side 980] [--images 3] [--text-tokens 58] [--json]
    python -m bench.sdxl_estimate --variants    # mumu-sdxl with one departure from the paper at a time

Each profile's MumuModel is assembled from the published configs bundled in models/configs/ inside
models.hf.empty_weights() (PyTorch's meta device: shapes only, no weights, seconds on a laptop). Forward FLOPs
come from torch.utils.flop_counter.FlopCounterMode on those modules (UNet, VAE encoder, modality projection,
perceiver, connector), except the SigLIP tower and the Mistral LM, whose mask helpers read values (.item()),
which meta tensors refuse: they are counted by the formulas written next to them. A multiply-add counts 2.

Per sample: `--images` prompt images (MUMU's maximum: 3) of `--crop-side` px after Idefics2's processor (it
keeps a crop's size between 378 and 980 px a side, and pads a batch to its largest crop: 980 is what a batch
with one large crop costs every crop), a caption of `--text-tokens` tokens, a 1024 px target.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from contextlib import contextmanager

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_DISABLE_TORCH_CHECK", "1")

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from mumu.config import load_profile  # noqa: E402
from models.connector import Connector  # noqa: E402
from models.decoder import enable_block_checkpointing, unet_blocks  # noqa: E402
from models.hf import empty_weights  # noqa: E402

# (label, profile, overrides): the profiles as they are, and mumu-sdxl with the vision cache its rule leaves off.
PROFILES = (("mumu-sdxl", "mumu-sdxl", {}), ("mumu-sdxl + vision cache", "mumu-sdxl", {"train.features.vision": True}),
            ("unimo-g", "unimo-g", {}))
# `--variants`: mumu-sdxl with one departure from the paper at a time (each row names what it departs from), all
# with the feature cache their config allows: what it would take to reach the FLOP goal set on the old 59.7 T.
_FROZEN_VLM = {"model.encoder.train_language_model": "frozen", "model.encoder.lora.enabled": False,
               "model.encoder.lora_projector": False, "train.features.prompt": True}
_PERCEIVER = {"model.encoder.bypass_resampler": False, "model.encoder.image_tokens": 64}
VARIANTS = (
    ("MUMU as published (mumu-sdxl)", {}),
    ("+ vision cache (not a departure; 34 MB a sample)", {"train.features.vision": True}),
    ("no gradient checkpointing (LM, UNet)", {"model.encoder.gradient_checkpointing": False,
                                              "model.decoder.gradient_checkpointing": False}),
    ("perceiver, 64 tokens an image (§3 ablates it)", _PERCEIVER),
    ("perceiver + vision cache", {**_PERCEIVER, "train.features.vision": True}),
    ("VLM frozen + prompt cache (Table 1: LoRA on it)", _FROZEN_VLM),
    ("VLM frozen + perceiver + prompt cache (both)", {**_FROZEN_VLM, **_PERCEIVER}),
)
BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def fwd_flops(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def saved_bytes(fn, owner=lambda: "all") -> dict:
    """Activation bytes autograd saves for backward, by `owner()` at the time each is saved: weights (and views
    of them) excluded, each tensor once."""
    total, seen = Counter(), set()

    def pack(t):
        base = t._base if t._base is not None else t
        if not isinstance(base, torch.nn.Parameter) and id(base) not in seen:
            seen.add(id(base))
            total[owner()] += base.numel() * base.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return dict(total)


def saved_bytes_by_block(unet, fn) -> dict:
    """saved_bytes of `fn` split by the top-level UNet block running when a tensor is saved (None: outside them)."""
    current, hooks = [None], []
    for name in unet_blocks(unet):
        block = unet.get_submodule(name)
        hooks.append(block.register_forward_pre_hook(lambda mod, args, name=name: current.__setitem__(0, name)))
        hooks.append(block.register_forward_hook(lambda mod, args, out: current.__setitem__(0, None)))
    try:
        return saved_bytes(fn, lambda: current[0])
    finally:
        for h in hooks:
            h.remove()


@contextmanager
def meta_inputs():
    with torch.device("meta"):
        yield


def part_flops(model, cfg, crop_side: int, images: int, text_tokens: int) -> dict:
    """Forward FLOPs of one sample's pass through each part, and the sample's prompt length."""
    enc, dec = model.encoder, model.decoder
    vcfg, tcfg = enc.model.config.vision_config, enc.model.config.text_config
    dtype = enc.model.dtype
    n_patch = (crop_side // vcfg.patch_size) ** 2
    per_image = enc.image_seq_len + 2  # its tokens + the two <fake_token_around_image>
    length = text_tokens + images * per_image
    res = cfg.model.decoder.resolution
    lat = res // dec.vae_scale_factor
    with meta_inputs():
        pixels = torch.empty(1, 3, res, res, dtype=dec.vae.dtype)
        latents = torch.empty(1, 4, lat, lat, dtype=dec.unet.dtype)
        ctx = torch.empty(1, length, dec.cross_attention_dim, dtype=dec.unet.dtype)
        added = {"text_embeds": torch.empty(1, dec.pooled_dim, dtype=dec.unet.dtype),
                 "time_ids": torch.empty(1, 6, dtype=dec.unet.dtype)}
        feats = torch.empty(1, n_patch, vcfg.hidden_size, dtype=dtype)
        hidden = torch.empty(1, length, enc.hidden_size, dtype=dtype)
        mask = torch.ones(1, length, dtype=torch.long)
    out = {"tokens": length, "patches_per_image": n_patch}
    with FlopCounterMode(display=False, depth=2) as fc:
        dec.unet(latents, torch.tensor([500], device="meta"), encoder_hidden_states=ctx, added_cond_kwargs=added)
    out["unet"] = int(fc.get_total_flops())
    by_module = fc.get_flop_counts()
    out["unet_blocks"] = {b: int(sum(by_module.get(f"{type(dec.unet).__name__}.{b}", {}).values()))
                          for b in unet_blocks(dec.unet)}
    out["vae_encoder"] = fwd_flops(lambda: dec.vae.encode(pixels))
    # SigLIP, per image: per layer 2N(4d^2 + 2dI) for q, k, v, o and the MLP + 4N^2 d for QK^T and AV; patch conv.
    d, i_, layers, ps = vcfg.hidden_size, vcfg.intermediate_size, vcfg.num_hidden_layers, vcfg.patch_size
    out["vision_tower"] = images * (layers * (2 * n_patch * (4 * d * d + 2 * d * i_) + 4 * n_patch ** 2 * d)
                                    + 2 * n_patch * d * 3 * ps * ps)
    projection = enc.model.connector.modality_projection
    proj = fwd_flops(lambda: projection(feats))
    # The backward of a LoRA'd projection whose input needs no gradient: the LoRA weights' gradients (small) and the
    # gradient at down_proj's input, which the gate/up LoRAs need (one more down_proj matmul).
    down_in = 2 * n_patch * projection.down_proj.in_features * projection.down_proj.out_features
    out["projection"], out["projection_backward"] = images * proj, images * down_in
    if not cfg.model.encoder.bypass_resampler:
        import transformers.masking_utils as masking

        with meta_inputs():
            ctx_img = torch.empty(1, n_patch, enc.hidden_size, dtype=dtype)
            img_mask = torch.ones(1, n_patch, dtype=torch.bool)
        resampler = enc.model.connector.perceiver_resampler
        # transformers asks whether a mask may be skipped by reading its values: answer "no" (same FLOPs).
        skip, masking._ignore_bidirectional_mask_sdpa = masking._ignore_bidirectional_mask_sdpa, lambda *a, **k: False
        try:
            out["perceiver"] = images * fwd_flops(lambda: resampler(ctx_img, img_mask))
        finally:
            masking._ignore_bidirectional_mask_sdpa = skip
    # Mistral: 2 FLOPs per non-embedding weight per token + 4 T^2 d per layer (QK^T and AV).
    non_emb = sum(p.numel() for p in enc.model.text_model.parameters()) - tcfg.vocab_size * tcfg.hidden_size
    out["language_model"] = 2 * non_emb * length + tcfg.num_hidden_layers * 4 * length ** 2 * tcfg.hidden_size
    out["connector"] = fwd_flops(lambda: model.connector(hidden, mask))
    return out


def step_flops(f: dict, cfg, cached: bool, images: int) -> dict:
    """FLOPs of one training sample per part: forward x the multiplier the profile's training implies.

    Trained fully: 3F (forward + activation and weight gradients); frozen weights that gradients pass through
    (LoRA layers, or parts upstream of trained ones): 2F (LoRA weight gradients ~2 % extra, left out); frozen with
    nothing trained upstream: F, under no_grad; gradient checkpointing: +F of each block it recomputes. With the cache a cached part costs
    nothing, except its share computed from pixels (MUMU's augmented crops): per image for the vision cache, per
    prompt for the prompt cache (one augmented image of `images` puts the whole prompt through the encoder)."""
    m, tr, feat = cfg.model, cfg.train, cfg.train.features
    enc, dec = m.encoder, m.decoder
    lora_lm, lora_proj = enc.train_language_model == "lora", enc.train_language_model == "lora" and enc.lora_projector
    aug = max(tr.pretrain.augment.share, tr.tune.augment.share)
    ckpt = dec.gradient_checkpointing
    recompute = f["unet"] if ckpt is True else sum(f["unet_blocks"][b] for b in ckpt or [])
    lm_mult = (2 if enc.train_language_model != "frozen" else 1) + (enc.gradient_checkpointing and lora_lm)
    out = {
        "unet": {"full": 3, "lora": 2, "frozen": 1}[dec.train] * f["unet"] + recompute,
        "vae_encoder": 0 if cached and feat.latents else f["vae_encoder"],
        "vision_tower": f["vision_tower"],
        "projection": f["projection"] + (f["projection_backward"] if lora_proj else 0),
        "perceiver": f.get("perceiver", 0),
        "language_model": lm_mult * f["language_model"],
        "connector": (3 + m.connector.gradient_checkpointing) * f["connector"],
    }
    prompt_cached = cached and feat.prompt and enc.train_language_model == "frozen" and enc.freeze_vision
    if prompt_cached:  # the whole prompt path comes from disk (UNIMO-G: no augmentation)
        share = 1 - (1 - aug) ** images  # prompts with at least one augmented image
        out.update(vision_tower=share * out["vision_tower"], projection=share * out["projection"],
                   perceiver=share * out["perceiver"], language_model=share * out["language_model"])
    elif cached and feat.vision and enc.freeze_vision:  # only augmented crops go through the tower
        out["vision_tower"] = aug * out["vision_tower"]
    out["total"] = sum(out.values())
    return out


def cache_bytes(f: dict, cfg, images: int, text_tokens: int) -> dict:
    """Bytes the cache stores per sample, per part (tensor data; safetensors and tar headers add ~1 KB)."""
    m, feat = cfg.model, cfg.train.features
    res, enc = m.decoder.resolution, m.encoder
    out = {}
    if feat.latents:
        out["posterior"] = 2 * 4 * (res // 8) ** 2 * BYTES[m.decoder.vae.dtype]
    width = BYTES[enc.model.dtype]
    if feat.prompt and enc.train_language_model == "frozen" and enc.freeze_vision:
        forms = {"text": text_tokens + 1, "multimodal": f["tokens"]}  # + BOS
        out["prompt"] = sum(n * (4096 * width + 8) for n in forms.values())
    elif feat.vision and enc.freeze_vision:
        out["vision"] = images * f["patches_per_image"] * 1152 * width
    return out


def connector_with(connector: Connector, checkpointing: bool) -> Connector:
    """The same connector (shapes only, on the meta device) with gradient checkpointing on or off, in training mode."""
    cfg = connector.cfg.model_copy(update={"gradient_checkpointing": checkpointing})
    with meta_inputs():
        return Connector(cfg, connector.in_dim, connector.out_dim, connector.pooled_dim).train()


def memory(model, cfg, length: int) -> dict:
    """Parameters (trainable ones at 16 B each under AdamW) and activations saved for backward at batch 1."""
    dec = model.decoder
    trainable = {k: sum(p.numel() for p in v) for k, v in model.parameter_groups().items()}
    res = cfg.model.decoder.resolution // dec.vae_scale_factor
    with meta_inputs():
        latents = torch.empty(1, 4, res, res, dtype=dec.unet.dtype)
        ctx = torch.empty(1, length, dec.cross_attention_dim, dtype=dec.unet.dtype)
        added = {"text_embeds": torch.empty(1, dec.pooled_dim, dtype=dec.unet.dtype),
                 "time_ids": torch.empty(1, 6, dtype=dec.unet.dtype)}
        hidden = torch.empty(1, length, model.encoder.hidden_size, dtype=model.encoder.model.dtype)
        mask = torch.ones(1, length, dtype=torch.long)
    model.train()
    def unet_forward():
        dec.unet(latents, torch.tensor([500], device="meta"), encoder_hidden_states=ctx, added_cond_kwargs=added)

    unet_saved = sum(saved_bytes(unet_forward).values())
    ckpt = cfg.model.decoder.gradient_checkpointing
    dec.unet.disable_gradient_checkpointing()  # what each block keeps when it is not recomputed
    by_block = saved_bytes_by_block(dec.unet, unet_forward)
    if ckpt:
        enable_block_checkpointing(dec.unet, ckpt)
    connector_saved = {on: sum(saved_bytes(lambda: connector_with(model.connector, on)(hidden, mask)).values())
                       for on in (False, True)}
    t = model.encoder.model.config.text_config
    # Mistral under LoRA, per token and layer (bf16): residual/norm inputs, q, k, v, attention output, o_proj input
    # (~8 d) + gate, up, act(gate)*up (3 I); with checkpointing only each layer's input (d) is kept.
    lm_full = (8 * t.hidden_size + 3 * t.intermediate_size) * 2 * length * t.num_hidden_layers
    lm_ckpt = t.hidden_size * 2 * length * t.num_hidden_layers
    return {"parameters": sum(p.numel() for p in model.parameters()), "trainable": trainable,
            "unet_saved_batch1": unet_saved, "unet_block_saved_uncheckpointed": by_block,
            "connector_saved_batch1": connector_saved[model.connector.cfg.gradient_checkpointing],
            "connector_saved_batch1_checkpointed": connector_saved[True],
            "lm_saved_batch1": lm_full, "lm_saved_batch1_checkpointed": lm_ckpt}


def estimate(label: str, profile: str, overrides: dict, crop_side: int, images: int, text_tokens: int) -> dict:
    from models.mumu_model import MumuModel

    cfg = load_profile(profile, overrides)
    with empty_weights():
        model = MumuModel.from_config(cfg.model)
    f = part_flops(model, cfg, crop_side, images, text_tokens)
    enc = cfg.model.encoder
    return {"profile": label, "forward": f, "unet_checkpointing": cfg.model.decoder.gradient_checkpointing,
            "lm_checkpointing": enc.gradient_checkpointing, "lm_trained": enc.train_language_model != "frozen",
            "uncached": step_flops(f, cfg, False, images), "cached": step_flops(f, cfg, True, images),
            "cache_bytes": cache_bytes(f, cfg, images, text_tokens),
            "memory": memory(model, cfg, f["tokens"])}


def report(results: list[dict], baseline: float) -> None:
    for r in results:
        print(f"\n{r['profile']}: {r['forward']['tokens']} prompt tokens, {r['forward']['patches_per_image']} "
              f"patches an image")
        print(f"  {'part':16s} {'forward T':>10s} {'uncached T':>11s} {'cached T':>9s}")
        for part in r["uncached"]:
            fwd = f"{r['forward'][part] / 1e12:10.2f}" if part in r["forward"] else " " * 10
            print(f"  {part:16s} {fwd} {r['uncached'][part] / 1e12:11.2f} {r['cached'][part] / 1e12:9.2f}")
        u, c = r["uncached"]["total"], r["cached"]["total"]
        print(f"  cached / uncached {c / u:.2f}x; cached / {baseline / 1e12:.1f} T (the stale estimate's total) "
              f"{c / baseline:.2f}x; uncached / {baseline / 1e12:.1f} T {u / baseline:.2f}x")
        saved = {"posterior": r["forward"]["vae_encoder"], "vision": r["uncached"]["vision_tower"]
                 - r["cached"]["vision_tower"], "prompt": u - c - r["forward"]["vae_encoder"]}
        for part, n in r["cache_bytes"].items():
            print(f"  cache {part:10s} {n / 1e6:8.2f} MB/sample, saves {saved[part] / 1e12:6.2f} T: "
                  f"{saved[part] / n / 1e6:6.2f} MFLOP per byte")
        mem = r["memory"]
        print(f"  parameters {mem['parameters'] / 1e9:.2f} B; trainable "
              + ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in mem["trainable"].items())
              + f"; saved for backward at batch 1: UNet {mem['unet_saved_batch1'] / 1e9:.2f} GB (its dtype and "
              f"checkpointing as the profile sets them), connector {mem['connector_saved_batch1'] / 1e9:.2f} GB "
              f"(fp32; {mem['connector_saved_batch1_checkpointed'] / 1e9:.2f} GB checkpointed), "
              f"LM under LoRA {mem['lm_saved_batch1'] / 1e9:.2f} GB "
              f"({mem['lm_saved_batch1_checkpointed'] / 1e9:.2f} GB checkpointed; none when frozen)")
        ckpt = r["unet_checkpointing"]
        print("  UNet blocks (forward T, GB kept for backward when not checkpointed; * = checkpointed): " + ", ".join(
            f"{b}{'*' if ckpt is True or b in (ckpt or []) else ''} {t / 1e12:.2f} T {mem['unet_block_saved_uncheckpointed'].get(b, 0) / 1e9:.1f} GB"
            for b, t in r["forward"]["unet_blocks"].items()))


def report_variants(crop_sides: tuple[int, ...], images: int, text_tokens: int, baseline: float) -> None:
    print(f"\nmumu-sdxl, one departure at a time, trained from the cache its config allows (TFLOPs a sample; "
          f"x = / {baseline / 1e12:.1f} T; GB = kept for backward a sample)")
    print(f"  {'variant':50s} {'tokens':>6s} " + " ".join(f"{f'{c} px crops':>18s}" for c in crop_sides) + f" {'GB':>5s}")
    for label, overrides in VARIANTS:
        rows = [estimate(label, "mumu-sdxl", overrides, c, images, text_tokens) for c in crop_sides]
        mem = rows[0]["memory"]
        lm = mem["lm_saved_batch1_checkpointed" if rows[0]["lm_checkpointing"] else "lm_saved_batch1"]
        kept = mem["unet_saved_batch1"] + mem["connector_saved_batch1"] + lm * rows[0]["lm_trained"]
        cells = " ".join(f"{r['cached']['total'] / 1e12:10.1f} {r['cached']['total'] / baseline:5.2f}x " for r in rows)
        print(f"  {label:50s} {rows[0]['forward']['tokens']:6d} {cells} {kept / 1e9:5.1f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--crop-side", type=int, default=980)
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--text-tokens", type=int, default=58)
    ap.add_argument("--baseline", type=float, default=59.7e12, help="the stale estimate's FLOPs per sample")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--variants", action="store_true", help="mumu-sdxl with one departure at a time, 980 and 378 px")
    a = ap.parse_args()
    if a.variants:
        report_variants((980, 378), a.images, a.text_tokens, a.baseline)
    else:
        rows = [estimate(*p, a.crop_side, a.images, a.text_tokens) for p in PROFILES]
        print(json.dumps(rows, indent=1, default=float)) if a.json else report(rows, a.baseline)
