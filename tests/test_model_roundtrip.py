"""save_pretrained / from_pretrained round trip (safetensors only) and which parameters train (LoRA counts)."""

from pathlib import Path

import PIL.Image
import pytest
import torch

from mumu.config import load_profile
from mumu.config.train import AttnLossConfig
from models.mumu_model import MumuModel


def tiny_cfg(encoder: dict | None = None, decoder: dict | None = None):
    cfg = load_profile("tiny").model
    return cfg.model_copy(update={
        "encoder": cfg.encoder.model_copy(update=encoder or {}),
        "decoder": cfg.decoder.model_copy(update=decoder or {}),
    })


def lora_decoder():
    cfg = load_profile("tiny").model.decoder
    return {"train": "lora", "lora": cfg.lora.model_copy(update={"enabled": True, "r": 4})}


PROMPTS = [["a red", PIL.Image.new("RGB", (64, 48), "red"), "in snow"], ["plain text prompt"], []]


def _perturb_trainable(model, seed=0):
    """Move trainable weights off their init (LoRA B starts at zero) so the round trip is a real check."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))


def _outputs(model):
    model.eval()
    with torch.no_grad():
        cond = model.encode(PROMPTS)
        lat = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(1))
        pred = model.predict(lat, torch.tensor([1, 500, 999]), cond, model.add_time_ids(3))
        img = model.decoder.decode_latents(lat[:1])
    return cond, pred, img


@pytest.mark.parametrize("decoder", [None, "lora", "vae_from_config"])
def test_round_trip_identical(tmp_path: Path, decoder):
    from mumu.config import ModelSource

    changes = {None: None, "lora": lora_decoder(), "vae_from_config": {"vae": ModelSource(config={}, seed=6)}}
    cfg = tiny_cfg(decoder=changes[decoder])
    model = MumuModel.from_config(cfg)
    _perturb_trainable(model)
    model.save_pretrained(tmp_path / "m")
    files = sorted(p.relative_to(tmp_path / "m").as_posix() for p in (tmp_path / "m").rglob("*") if p.is_file())
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    assert {"mumu_config.json", "connector/connector.safetensors", "connector/connector.json",
            "encoder/model.safetensors", "encoder/processor_config.json", "encoder_lora/adapter_model.safetensors",
            "unet/diffusion_pytorch_model.safetensors"} <= set(files)
    # The tiny profile's VAE is the bundled fitted one: loaded from its source again, not copied; a VAE
    # built from a config is saved with the model.
    vae_saved = "vae/diffusion_pytorch_model.safetensors" in files
    assert vae_saved == (decoder == "vae_from_config")
    assert vae_saved or (cfg.decoder.vae.pretrained == "bundled:tiny_vae" and not any(f.startswith("vae/") for f in files))
    assert ("unet_lora/adapter_model.safetensors" in files) == (decoder == "lora")

    loaded = MumuModel.from_pretrained(tmp_path / "m")
    a, b = _outputs(model), _outputs(loaded)
    for x, y in zip(a[0].__dict__.values(), b[0].__dict__.values()):
        assert torch.equal(x, y)
    assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    assert a[1].abs().sum() > 0
    # same trainable set, same values
    sa, sb = model.trainable_state_dict(), loaded.trainable_state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    # the training loss under one generator is identical too
    model.train(), loaded.train()
    batch_prompts = [type("E", (), {"key": "k", "prompt": PROMPTS[0], "image": PIL.Image.new("RGB", (64, 64)),
                                    "entity_masks": [torch.ones(64, 64, dtype=torch.bool).numpy()]})()]
    la = model.training_loss(model.prepare(batch_prompts), torch.Generator().manual_seed(2), AttnLossConfig(weight=0.1))
    lb = loaded.training_loss(loaded.prepare(batch_prompts), torch.Generator().manual_seed(2), AttnLossConfig(weight=0.1))
    assert la["loss"].item() == lb["loss"].item() and la["attn"].item() > 0


def _lora_count(module, pattern) -> int:
    """r * (in + out) for every Linear whose name matches: what LoRA adds."""
    import re

    total = 0
    for name, sub in module.named_modules():
        if hasattr(sub, "base_layer") and re.fullmatch(pattern, name):
            base = sub.base_layer
            total += sub.r["default"] * (base.in_features + base.out_features)
    return total


def test_lora_parameter_counts():
    model = MumuModel.from_config(tiny_cfg(decoder=lora_decoder()))
    groups = model.parameter_groups()
    enc = [n for n, p in model.encoder.named_parameters() if p.requires_grad]
    assert enc and all("lora_" in n for n in enc)
    assert all(".text_model." in n or ".modality_projection." in n for n in enc)
    # tiny text model: 2 layers x (q, k, v, o); + gate/up/down of the modality projection; r = 8
    tm = model.encoder.model.text_model
    hid, kv = 32, 16  # hidden 32; 1 kv head of dim 16
    per_layer = 8 * ((hid + hid) + (hid + kv) + (hid + kv) + (hid + hid))
    proj = model.encoder.model.connector.modality_projection
    proj_count = 8 * ((32 + 64) + (32 + 64) + (64 + 32))
    assert len(tm.layers) == 2 and proj.gate_proj.base_layer.in_features == 32
    assert sum(p.numel() for p in groups["encoder"]) == 2 * per_layer + proj_count
    unet_trainable = [n for n, p in model.unet.named_parameters() if p.requires_grad]
    assert unet_trainable and all("lora_" in n for n in unet_trainable)
    assert sum(p.numel() for p in groups["unet"]) == _lora_count(model.unet, r".*(to_q|to_k|to_v|to_out\.0)")
    assert not any(p.requires_grad for p in model.vae.parameters())
    assert not any(p.requires_grad for p in model.encoder.model.vision_model.parameters())
    assert sum(p.numel() for p in groups["connector"]) == sum(p.numel() for p in model.connector.parameters())

    frozen = MumuModel.from_config(tiny_cfg(
        encoder={"train_language_model": "frozen", "lora": load_profile("tiny").model.encoder.lora.model_copy(
            update={"enabled": False})},
        decoder={"train": "frozen"}))
    assert set(frozen.parameter_groups()) == {"connector"}
    full = MumuModel.from_config(tiny_cfg(decoder={"train": "full"}))
    assert sum(p.numel() for p in full.parameter_groups()["unet"]) == sum(p.numel() for p in full.unet.parameters())


def test_from_config_is_deterministic():
    """Same config -> same weights, LoRA adapters included (their init draws from the global RNG)."""
    cfg = tiny_cfg(decoder=lora_decoder())
    torch.manual_seed(1)
    a = MumuModel.from_config(cfg).state_dict()
    torch.manual_seed(2)
    b = MumuModel.from_config(cfg).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any("lora_A" in k for k in a)
