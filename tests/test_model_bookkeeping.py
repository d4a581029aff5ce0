"""Prompt encoder: entity token bookkeeping for 0/1/3 images, padding sides, truncation, empty prompt."""

from dataclasses import dataclass

import numpy as np
import PIL.Image
import pytest
import torch

from mumu.config import load_profile
from mumu.errors import UserError
from models.encoder import PromptEncoder, truncate_at_segment
from models.mumu_model import MumuModel


def solid(color, size=(64, 64)):
    return PIL.Image.new("RGB", size, color)


@dataclass
class Ex:
    key: str
    prompt: list
    image: PIL.Image.Image
    entity_masks: list


@pytest.fixture(scope="module")
def cfg():
    return load_profile("tiny").model.encoder


@pytest.fixture(scope="module")
def encoder(cfg):
    return PromptEncoder(cfg).eval()


PROMPTS = [
    ["a red square on the beach"],
    ["a photo of", solid("red"), "in a garden"],
    [solid("red"), "and", solid("green", (64, 32)), solid("blue"), "together"],
]


def test_entity_token_mask_for_0_1_3_images(encoder):
    toks = encoder.tokenize(PROMPTS)
    n = encoder.image_seq_len
    assert n == 4  # tiny profile: image_tokens=4 (bypass_resampler)
    assert toks.entity_token_mask.shape == (3, 3, toks.input_ids.shape[1])
    assert toks.entity_valid.tolist() == [[False] * 3, [True, False, False], [True, True, True]]
    is_image = toks.input_ids == encoder.image_token_id
    for b in range(3):
        etm = toks.entity_token_mask[b]
        assert etm.sum(-1).tolist() == [n if v else 0 for v in toks.entity_valid[b].tolist()]
        # entities are disjoint, cover exactly the image tokens, and come in prompt order
        assert torch.equal(etm.any(0), is_image[b])
        assert int(etm.sum()) == int(is_image[b].sum())
        starts = [int(etm[k].nonzero()[0]) for k in range(3) if toks.entity_valid[b, k]]
        assert starts == sorted(starts)
        for k in range(3):
            pos = etm[k].nonzero().flatten()
            if len(pos):
                assert (pos.diff() == 1).all()  # contiguous
    assert toks.pixel_values.shape[0] == 4  # 0 + 1 + 3 images, batch order
    assert toks.kept == [[], [0], [0, 1, 2]]
    # the green 64x32 crop is padded: its pixel mask is partly False
    assert not bool(toks.pixel_attention_mask[2].all()) and bool(toks.pixel_attention_mask[1].all())


def test_padding_side_does_not_change_hidden_states(cfg):
    right = PromptEncoder(cfg).eval()
    left = PromptEncoder(cfg.model_copy(update={"padding_side": "left"})).eval()
    with torch.no_grad():
        alone = [right(right.tokenize([p]))[0] for p in PROMPTS]
        for enc in (right, left):
            toks = enc.tokenize(PROMPTS)
            hidden = enc(toks)
            for b, ref in enumerate(alone):
                real = toks.attention_mask[b].bool()
                assert int(real.sum()) == ref.shape[0]
                torch.testing.assert_close(hidden[b, real], ref, atol=1e-5, rtol=1e-5)
                # entity positions shift with padding but select the same tokens
                if toks.entity_valid[b].any():
                    ids = toks.input_ids[b][toks.entity_token_mask[b].any(0)]
                    assert (ids == enc.image_token_id).all()
    assert left.tokenize(PROMPTS).attention_mask[0, 0] == 0  # really left-padded


def test_truncation_never_cuts_an_image():
    img, fake, t = 9, 8, 1
    # t t F I I F I I F t   (two adjacent images sharing a boundary token)
    ids = [t, t, fake, img, img, fake, img, img, fake, t]
    runs = [(3, 5), (6, 8)]
    assert truncate_at_segment(ids, runs, 10, img) == (ids, 2)
    assert truncate_at_segment(ids, runs, 9, img) == (ids[:9], 2)  # trailing text cut only
    # limit inside the second image: it is dropped, the shared boundary stays as image 1's closer
    assert truncate_at_segment(ids, runs, 8, img) == (ids[:6], 1)
    assert truncate_at_segment(ids, runs, 7, img) == (ids[:6], 1)
    # limit inside the first image: both dropped, cut before its opening boundary
    assert truncate_at_segment(ids, runs, 4, img) == (ids[:2], 0)


def test_truncation_in_tokenize(cfg):
    enc = PromptEncoder(cfg.model_copy(update={"max_text_tokens": 12})).eval()
    # "a photo" (2) + F IIII F (6) -> 8 tokens; the second image would end past 12
    toks = enc.tokenize([["a photo", solid("red"), "and", solid("blue"), "end"]])
    assert toks.input_ids.shape[1] <= 12
    assert toks.kept == [[0]] and toks.dropped == 1
    assert toks.entity_valid.tolist() == [[True]]
    assert int((toks.input_ids == enc.image_token_id).sum()) == enc.image_seq_len
    assert toks.pixel_values.shape[0] == 1
    with torch.no_grad():
        assert enc(toks).shape == (1, toks.input_ids.shape[1], enc.hidden_size)


def test_empty_prompt_and_resampler_mode(cfg):
    enc = PromptEncoder(cfg.model_copy(update={"bypass_resampler": False})).eval()
    assert enc.image_seq_len == 4  # the perceiver's latents
    with torch.no_grad():
        toks = enc.tokenize([[], ["x", solid("red")]])
        hidden = enc(toks)
    assert toks.attention_mask[0].sum() == 1 and toks.entity_valid.tolist() == [[False], [True]]
    assert torch.isfinite(hidden).all()


def test_prepare_batch_aligns_masks_and_rejects_mismatch():
    model = MumuModel.from_config(load_profile("tiny").model)
    mask = np.zeros((64, 96), bool)
    mask[:, :48] = True  # left half of a 96x64 target
    exs = [Ex("k0", ["a", solid("red"), solid("blue")], solid("white", (96, 64)), [mask, ~mask]),
           Ex("k1", ["text only"], solid("black", (64, 64)), [])]
    batch = model.prepare(exs)
    assert batch.pixels.shape == (2, 3, 64, 64)
    assert batch.pixels[0].min() == 1.0 and batch.pixels[1].max() == -1.0
    # 96x64 -> short side 64 -> centre crop 16 px from the left: (orig_h, orig_w, top, left, 64, 64)
    assert batch.add_time_ids[0].tolist() == [64, 96, 0, 16, 64, 64]
    # left half of 96 cropped [16, 80): 32 of 64 columns
    assert batch.entity_masks[0, 0].mean().item() == pytest.approx(0.5)
    assert batch.entity_masks[0, 0, :, :32].min() == 1 and batch.entity_masks[0, 0, :, 32:].max() == 0
    assert batch.entity_masks[0, 1].mean().item() == pytest.approx(0.5)
    assert batch.entity_masks[1].sum() == 0
    with pytest.raises(UserError, match="entity masks"):
        model.prepare([Ex("bad", ["a", solid("red")], solid("white"), [])])
    with pytest.raises(UserError, match="segment"):
        model.encoder.tokenize([["a", 3]])


def test_encoder_gradient_checkpointing_same_gradients(cfg, encoder):
    ckpt = PromptEncoder(cfg.model_copy(update={"gradient_checkpointing": True})).train()
    plain = PromptEncoder(cfg).train()
    assert ckpt.model.text_model.is_activation_checkpointing
    toks = plain.tokenize(PROMPTS)
    params = lambda e: [p for p in e.parameters() if p.requires_grad]  # noqa: E731
    ga = torch.autograd.grad(plain(toks).square().sum(), params(plain))
    gb = torch.autograd.grad(ckpt(toks).square().sum(), params(ckpt))
    assert sum(g.abs().sum().item() for g in ga) > 0
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
