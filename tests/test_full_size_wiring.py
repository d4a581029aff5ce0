"""Full-size wiring of the real profiles, shapes only: every model of mumu-sdxl and unimo-g is assembled from the
published configs bundled in models/configs/ (no weights) on PyTorch's meta device, then one training loss (with
the attention-mask loss), one sampling step and one forward of each data-stage model run on it. Meta tensors have
shapes and no values, so this costs seconds and no memory, and a width that does not fit its neighbour fails.

Meta tensors hold no values, so the few places that branch on a value are fed real ones:
- transformers' "skip the attention mask when nothing is padded" shortcut is answered "do not skip" (always
  correct, only slower), and its token/feature count check is switched off (TRANSFORMERS_DISABLE_TORCH_CHECK; the
  count is checked here instead, on the real token ids);
- which entities a prompt has (`entity_valid`) stays on the CPU, as the tokenizer made it;
- the encoder's per-image valid patch grid is read with int(), so the image path (vision tower -> projection or
  perceiver -> LM width, image_seq_len tokens) is checked on its own below, and the loss runs with the prompt's
  image tokens at their token embeddings.
"""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers.masking_utils as masking
from PIL import Image

from mumu.config import load_profile
from mumu.config.train import AttnLossConfig
from mumu.errors import UserError
from mumu.train.data import Example
from models import hf
from models.connector import Connector
from models.hf import empty_weights
from models.mumu_model import MumuModel

PROFILES = ["mumu-sdxl", "unimo-g"]


@pytest.fixture(autouse=True)
def meta_friendly_transformers(monkeypatch):
    for name in ("_ignore_causal_mask_sdpa", "_ignore_bidirectional_mask_sdpa"):
        original = getattr(masking, name)

        def no_skip_on_meta(padding_mask, *args, _original=original, **kwargs):
            if padding_mask is not None and padding_mask.device.type == "meta":
                return False
            return _original(padding_mask, *args, **kwargs)

        monkeypatch.setattr(masking, name, no_skip_on_meta)
    monkeypatch.setenv("TRANSFORMERS_DISABLE_TORCH_CHECK", "1")


@pytest.fixture(scope="module")
def models():
    built = {}
    for name in PROFILES:
        cfg = load_profile(name)
        with empty_weights():
            built[name] = (cfg, MumuModel.from_config(cfg.model))
    return built


def examples(resolution: int) -> list[Example]:
    target = Image.new("RGB", (resolution, resolution), (200, 30, 30))
    mask = np.zeros((resolution, resolution), bool)
    mask[100:400, 100:400] = True
    crop = Image.new("RGB", (300, 300), (0, 0, 255))
    return [Example("with-image", ["a ", crop, "dog on a sofa"], target, [mask]),
            Example("text-only", ["a cat on a sofa"], target, [])]


def training_loss(model: MumuModel, resolution: int) -> dict[str, torch.Tensor]:
    exs = examples(resolution)
    batch = model.prepare(exs)  # tokenizes on the CPU, then moves everything to the model's (meta) device
    assert batch.pixels.device.type == "meta" and batch.entity_masks.shape[-2:] == (resolution, resolution)
    batch.tokens.pixel_values = None  # the image path is checked in test_image_path (see the module docstring)
    batch.tokens.entity_valid = model.encoder.tokenize([ex.prompt for ex in exs]).entity_valid
    return model.training_loss(batch, torch.Generator().manual_seed(0), AttnLossConfig(weight=0.01), cfg_dropout=0.0)


class ShapeOnlyScheduler:
    """The sampler's loop on meta latents: DDIM's timesteps, and a step that only needs the prediction to have
    the latents' shape (DDIM's own step branches on the timestep's value)."""

    def __init__(self, real):
        self.real, self.init_noise_sigma = real, real.init_noise_sigma

    def set_timesteps(self, steps, device=None):
        self.real.set_timesteps(steps)
        self.timesteps = self.real.timesteps[:1].to(device)  # one step

    def scale_model_input(self, x, t):
        return x

    def step(self, out, t, latents, generator=None):
        assert out.shape == latents.shape, (out.shape, latents.shape)
        return SimpleNamespace(prev_sample=latents - out)


def sampling_step(model: MumuModel, cfg, monkeypatch) -> torch.Tensor:
    """One guided denoising step through MumuSampler's own loop; returns the decoded pixels."""
    import mumu.generate as generate

    real_build = generate.build_scheduler
    monkeypatch.setattr(generate, "build_scheduler", lambda c, t: ShapeOnlyScheduler(real_build(c, t)))
    decoded = []
    real_decode = model.decoder.decode_latents

    def decode(latents):  # the VAE decodes on meta; the sampler's PIL conversion then gets zeros of that shape
        decoded.append(real_decode(latents))
        return torch.zeros(decoded[-1].shape)

    monkeypatch.setattr(model.decoder, "decode_latents", decode)
    images = generate.MumuSampler(model, cfg.eval.sampler).generate_batch([["a cat on a sofa"], ["a red car"]], n=1)
    assert [im.size for (im,) in images] == [(decoded[0].shape[-1], decoded[0].shape[-2])] * 2
    return decoded[0]


@pytest.mark.parametrize("name", PROFILES)
def test_full_size_training_loss_and_sampling_step(models, name, monkeypatch):
    cfg, model = models[name]
    assert all(p.device.type == "meta" for p in model.parameters())
    # The published widths meet: Idefics2's 4096-wide LM -> connector -> SDXL's 2048-wide cross-attention and
    # 1280-wide pooled vector + 6 time ids x 256 = 2816.
    assert (model.encoder.hidden_size, model.decoder.cross_attention_dim, model.decoder.pooled_dim) == (4096, 2048, 1280)
    assert model.unet.config.projection_class_embeddings_input_dim == 1280 + 6 * 256
    assert sum(p.numel() for p in model.unet.parameters()) > 2.5e9  # the full SDXL UNet, not a cut-down one
    out = training_loss(model, cfg.model.decoder.resolution)
    assert {k: (v.shape, v.device.type) for k, v in out.items()} == {k: ((), "meta") for k in ("loss", "diffusion", "attn")}
    assert model.attn_store.resolutions  # the attention-mask loss read SDXL's cross-attention maps
    pixels = sampling_step(model, cfg, monkeypatch)
    r = cfg.model.decoder.resolution
    assert pixels.shape == (2, 3, r, r) and pixels.device.type == "meta"


@pytest.mark.parametrize("name", PROFILES)
def test_image_path(models, name):
    """Vision tower -> (projection + pooling | perceiver) -> one LM-wide token per image_seq_len position."""
    cfg, model = models[name]
    enc = model.encoder
    tokens = enc.tokenize([["a ", Image.new("RGB", (300, 200), (0, 0, 255)), "dog"]])  # real ids, on the CPU
    runs = (tokens.input_ids[0] == enc.image_token_id).sum().item()
    assert runs == enc.image_seq_len == (cfg.model.encoder.image_tokens if cfg.model.encoder.bypass_resampler else 64)
    pixel_values = tokens.pixel_values.to("meta", enc.model.dtype)  # as the encoder casts them
    ps = enc.model.config.vision_config.patch_size
    hp, wp = pixel_values.shape[-2] // ps, pixel_values.shape[-1] // ps
    patch_mask = torch.ones((1, hp, wp), dtype=torch.bool, device="meta")
    vis = enc.model.vision_model(pixel_values=pixel_values, patch_attention_mask=patch_mask).last_hidden_state
    assert vis.shape == (1, hp * wp, 1152)
    if cfg.model.encoder.bypass_resampler:  # MUMU: every patch projected, pooled to an n x n grid
        proj = enc.model.connector.modality_projection(vis)
        n = round(enc.image_seq_len ** 0.5)
        feats = F.adaptive_avg_pool2d(proj[0].view(hp, wp, -1).permute(2, 0, 1), n).flatten(1).T[None]
    else:  # UNIMO-G: the frozen MLLM's own perceiver
        feats = enc.model.connector(vis, attention_mask=patch_mask.view(1, -1))
    assert feats.shape == (1, enc.image_seq_len, enc.hidden_size)
    embeds = enc.model.get_input_embeddings()(tokens.input_ids.to("meta"))
    merged = enc.model.inputs_merger(tokens.input_ids.to("meta"), embeds, feats.reshape(-1, feats.shape[-1]))
    assert merged.shape == embeds.shape


@pytest.mark.parametrize("wrong", ["encoder hidden size", "cross-attention dim", "pooled dim", "time-id length"])
def test_a_wrong_width_fails(models, wrong, monkeypatch):
    """The check is not vacuous: one wrong width between the parts and the loss cannot be computed."""
    cfg, model = models["mumu-sdxl"]
    hidden, cross, pooled = model.encoder.hidden_size, model.decoder.cross_attention_dim, model.decoder.pooled_dim
    dims = {"encoder hidden size": (3072, cross, pooled), "cross-attention dim": (hidden, 1024, pooled),
            "pooled dim": (hidden, cross, 1024)}.get(wrong, (hidden, cross, pooled))
    right = model.connector
    with torch.device("meta"):
        model.connector = Connector(cfg.model.connector, *dims)
    try:
        with monkeypatch.context() as patch, pytest.raises(RuntimeError):
            if wrong == "time-id length":  # 5 ids instead of SDXL's 6 (sizes, crop corner, target size)
                patch.setattr(type(model.decoder), "add_time_ids", staticmethod(lambda hw, tl, target: [*hw, *tl, target[0]]))
            training_loss(model, cfg.model.decoder.resolution)
    finally:
        model.connector = right  # with it, the same loss runs (test_full_size_training_loss_and_sampling_step)


def test_a_wrong_bundled_config_fails(tmp_path, monkeypatch):
    """A published config edited to a cross-attention width the connector does not produce for every block."""
    bundled = tmp_path / "configs"
    shutil.copytree(hf.BUNDLED_CONFIGS_DIR, bundled)
    unet_json = bundled / "sdxl-base-1.0" / "unet" / "config.json"
    conf = json.loads(unet_json.read_text())
    conf["cross_attention_dim"] = [2048, 2048, 1024]  # blocks disagree: the last one expects 1024-wide states
    unet_json.write_text(json.dumps(conf))
    monkeypatch.setattr(hf, "BUNDLED_CONFIGS_DIR", bundled)
    cfg = load_profile("mumu-sdxl")
    with empty_weights():
        model = MumuModel.from_config(cfg.model)
    with pytest.raises(RuntimeError):
        training_loss(model, cfg.model.decoder.resolution)


def test_data_stage_models_at_full_size():
    from models.detector import build_grounding_dino, build_prompt
    from models.segmenter import build_sam

    cfg = load_profile("mumu-sdxl").data
    with empty_weights():
        detector, det_proc = build_grounding_dino(cfg.detect.model)
        sam, sam_proc = build_sam(cfg.segment.model)
        captioner, cap_proc = hf.build_idefics2(cfg.caption.model)
    image = Image.new("RGB", (640, 480), (10, 200, 30))

    prompt, _ = build_prompt(["a dog", "a vintage typewriter"])
    enc = det_proc(images=[image], text=[prompt], return_tensors="pt")
    out = detector(**{k: v.to("meta") for k, v in enc.items()})
    assert enc["pixel_values"].shape == (1, 3, 800, 1066)  # shortest edge 800, as published
    assert out.logits.shape == (1, 900, 256) and out.pred_boxes.shape == (1, 900, 4)  # 900 queries x max_text_len

    sin = sam_proc(images=[image], input_boxes=[[[10.0, 20.0, 200.0, 300.0]]], return_tensors="pt")
    embeddings = sam.get_image_embeddings(sin["pixel_values"].to("meta"))
    masks = sam(image_embeddings=embeddings, input_boxes=sin["input_boxes"].to("meta"), multimask_output=False)
    assert embeddings.shape == (1, 256, 64, 64) and masks.pred_masks.shape == (1, 1, 1, 256, 256)

    # The captioner's forward, step by step (Idefics2 reads its per-sample image counts with tolist()).
    inputs = cap_proc(images=[[image]], text=["<image>Describe this image in one sentence."], return_tensors="pt")
    ids = inputs["input_ids"]
    assert (ids == captioner.config.image_token_id).sum() == 64  # the perceiver's 64 latents
    core = captioner.model
    pixel_values = inputs["pixel_values"][:, 0].to("meta", core.dtype)
    ps = core.config.vision_config.patch_size
    grid = (1, pixel_values.shape[-2] // ps, pixel_values.shape[-1] // ps)
    patch_mask = torch.ones(grid, dtype=torch.bool, device="meta")
    vis = core.vision_model(pixel_values=pixel_values, patch_attention_mask=patch_mask).last_hidden_state
    feats = core.connector(vis, attention_mask=patch_mask.view(1, -1))
    assert feats.shape == (1, 64, 4096)
    embeds = core.inputs_merger(ids.to("meta"), core.get_input_embeddings()(ids.to("meta")), feats.reshape(-1, 4096))
    hidden = core.text_model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"].to("meta")).last_hidden_state
    assert captioner.lm_head(hidden).shape == (*ids.shape, 32003)


def test_unbundled_checkpoint_is_a_user_error():
    cfg = load_profile("mumu-sdxl", {"model.decoder.vae.pretrained": "madebyollin/sdxl-vae-fp16-fix",
                                     "model.decoder.vae.subfolder": None})
    with empty_weights(), pytest.raises(UserError, match="no bundled config for 'madebyollin/sdxl-vae-fp16-fix'"):
        MumuModel.from_config(cfg.model)
