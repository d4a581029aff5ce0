"""Tiny DINO / CLIP evaluation encoders: the real loading path, pooling, and image handling."""

import numpy as np
import pytest
import torch
from PIL import Image

from models.eval_encoders import ClipEncoder, DinoEncoder, EvalEncoders
from mumu.config import ModelSource, load_profile
from mumu.eval.metrics import cosine_matrix


def _images():
    rng = np.random.default_rng(0)
    base = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(3)]
    return [Image.fromarray(a) for a in base]


@pytest.fixture(scope="module")
def encoders():
    return EvalEncoders.from_config(load_profile("tiny").eval)


def test_save_load_round_trip_gives_identical_embeddings(encoders, tmp_path):
    images, texts = _images(), ["a hot dog on the beach", "a cactus", "snow"]
    encoders.dino.save_pretrained(tmp_path / "dino")
    encoders.clip.save_pretrained(tmp_path / "clip")
    dino = DinoEncoder.from_source(ModelSource(pretrained=str(tmp_path / "dino")))
    clip = ClipEncoder.from_source(ModelSource(pretrained=str(tmp_path / "clip")))
    assert torch.equal(dino.features(images), encoders.dino.features(images))
    assert torch.equal(clip.image_embeds(images), encoders.clip.image_embeds(images))
    assert torch.equal(clip.text_embeds(texts), encoders.clip.text_embeds(texts))
    assert clip.tokenizer(texts)["input_ids"] == encoders.clip.tokenizer(texts)["input_ids"]


def test_dino_feature_is_last_layer_cls_token(encoders):
    images = _images()
    feats = encoders.dino.features(images, batch_size=2)  # batching must not change the result
    assert feats.shape == (3, encoders.dino.model.config.hidden_size)
    pixels = encoders.dino.image_processor(images=images, return_tensors="pt")["pixel_values"]
    assert pixels.shape[-2:] == (32, 32)
    with torch.no_grad():
        cls = encoders.dino.model(pixel_values=pixels).last_hidden_state[:, 0]
    torch.testing.assert_close(feats, cls, rtol=1e-5, atol=1e-5)


def test_clip_embeddings_normalised_and_text_pooled_at_end_token(encoders):
    clip = encoders.clip
    emb = clip.image_embeds(_images())
    assert emb.shape == (3, clip.model.config.projection_dim)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    raw = clip.image_embeds(_images(), normalize=False)
    torch.testing.assert_close(torch.nn.functional.normalize(raw, dim=-1), emb)
    ids = clip.tokenizer(["a cactus"])["input_ids"][0]
    assert ids[0] == clip.tokenizer.bos_token_id and ids[-1] == clip.tokenizer.eos_token_id
    assert clip.model.config.text_config.eos_token_id == clip.tokenizer.eos_token_id != 2
    # pooled at </s>: padding the short text in a batch with a long one leaves its embedding unchanged
    alone = clip.text_embeds(["a cactus"])
    padded = clip.text_embeds(["a cactus", "a hot dog on top of a wooden floor in the snow"])
    torch.testing.assert_close(padded[0], alone[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(padded[0], padded[1])


def test_transparent_pixels_are_judged_on_white(encoders):
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., :3] = 37  # colour hidden under alpha 0
    rgba[8:24, 8:24] = (200, 30, 30, 255)
    on_white = rgba[..., :3].copy()
    on_white[rgba[..., 3] == 0] = 255
    a = encoders.dino.features([Image.fromarray(rgba, "RGBA")])
    b = encoders.dino.features([Image.fromarray(on_white)])
    torch.testing.assert_close(a, b)


def test_tiny_features_rank_a_noisy_copy_above_another_subject(encoders):
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:64, :64]
    disc = ((yy - 32) ** 2 + (xx - 32) ** 2 < 300)[..., None] * np.array([220, 40, 40])
    bars = ((xx // 8) % 2 == 0)[..., None] * np.array([30, 60, 230])
    subject, other = [Image.fromarray((255 - a).clip(0, 255).astype(np.uint8)) for a in (disc, bars)]
    noisy = Image.fromarray(np.clip(np.asarray(subject, float) + rng.normal(0, 20, (64, 64, 3)), 0, 255)
                            .astype(np.uint8))
    for feats in (encoders.dino.features, encoders.clip.image_embeds):
        f = feats([subject, noisy, other]).numpy()
        sims = cosine_matrix(f[:1], f[1:])[0]
        assert sims[0] > sims[1] + 0.05, sims


def test_hub_format_processor_configs_load_into_the_pil_processors(encoders, tmp_path):
    """The published repos carry legacy *FeatureExtractor configs; the Pil processors must read them
    (what facebook/dino-vits16 and openai/clip-vit-base-patch32 ship, reduced to the keys used)."""
    import json

    hub = {
        "dino": {"do_normalize": True, "do_resize": True, "feature_extractor_type": "ViTFeatureExtractor",
                 "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "resample": 2, "size": 224},
        "clip": {"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                 "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
                 "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224},
    }
    encoders.dino.save_pretrained(tmp_path / "dino")
    encoders.clip.save_pretrained(tmp_path / "clip")
    for name, cfg in hub.items():
        (tmp_path / name / "preprocessor_config.json").write_text(json.dumps(cfg))
    dino = DinoEncoder.from_source(ModelSource(pretrained=str(tmp_path / "dino")))
    clip = ClipEncoder.from_source(ModelSource(pretrained=str(tmp_path / "clip")))
    wide = [Image.new("RGB", (300, 200), (10, 120, 240))]
    assert dino.image_processor(images=wide, return_tensors="pt")["pixel_values"].shape == (1, 3, 224, 224)
    assert clip.image_processor(images=wide, return_tensors="pt")["pixel_values"].shape == (1, 3, 224, 224)
    assert clip.image_processor.resample == 3 and clip.image_processor.size.shortest_edge == 224  # bicubic, then crop
