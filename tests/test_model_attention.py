"""Cross-attention capture (equals SDPA), the attention-mask loss (zero when maps = masks), its gradients."""

from dataclasses import dataclass

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F

from mumu.config import load_profile
from mumu.config.train import AttnLossConfig
from mumu.errors import UserError
from models.attention import CaptureProcessor, attention_mask_loss, entity_maps
from models.mumu_model import MumuModel


@dataclass
class Ex:
    key: str
    prompt: list
    image: PIL.Image.Image
    entity_masks: list


def scene():
    """Target: red square top-left, blue disc bottom-right on grey; crops of each as prompt images."""
    img = np.full((64, 64, 3), 128, np.uint8)
    red = np.zeros((64, 64), bool)
    red[4:28, 4:28] = True
    yy, xx = np.mgrid[:64, :64]
    blue = (yy - 44) ** 2 + (xx - 44) ** 2 < 14**2
    img[red] = (220, 20, 20)
    img[blue] = (20, 20, 220)
    crop_r = PIL.Image.new("RGB", (32, 32), (220, 20, 20))
    crop_b = PIL.Image.new("RGB", (32, 32), (20, 20, 220))
    return [Ex("s0", ["a", crop_r, "and a", crop_b, "on grey"], PIL.Image.fromarray(img), [red, blue]),
            Ex("s1", ["a grey picture"], PIL.Image.fromarray(img), [])]


@pytest.fixture(scope="module")
def model():
    return MumuModel.from_config(load_profile("tiny").model)


def test_capture_only_on_cross_attention(model):
    procs = model.unet.attn_processors
    captured = [n for n, p in procs.items() if isinstance(p, CaptureProcessor)]
    assert captured and all(".attn2." in n for n in captured)
    assert len(captured) == sum(".attn2." in n for n in procs)  # every attn2, no attn1
    assert not any(isinstance(p, CaptureProcessor) for n, p in procs.items() if ".attn1." in n)


def test_captured_path_equals_sdpa(model):
    model.eval()
    batch = model.prepare(scene())
    with torch.no_grad():
        cond = model.encode_tokens(batch.tokens)
        assert cond.attention_mask[1].sum() < cond.attention_mask.shape[1]  # padding is exercised
        g = torch.Generator().manual_seed(3)
        lat = torch.randn(2, 4, 16, 16, generator=g)
        t = torch.tensor([10, 700])
        store = model.attn_store
        store.reset()
        store.enabled, store.recording, store.latent_hw = False, False, (16, 16)
        fast = model.predict(lat, t, cond, batch.add_time_ids)
        store.enabled = store.recording = True
        store.entity_token_mask, store.layers = None, None
        slow = model.predict(lat, t, cond, batch.add_time_ids)
        store.enabled = store.recording = False
    torch.testing.assert_close(slow, fast, atol=1e-5, rtol=1e-5)
    maps = store.maps
    assert len(maps) == 7  # 2 down + 1 mid + 4 up cross-attention layers in the tiny UNet
    heads = {m.shape[1] for m in maps}
    assert heads == {2, 4}
    for m in maps:
        assert m.shape[0] == 2 and m.shape[2] in (256, 64) and m.shape[3] == cond.hidden.shape[1]
        torch.testing.assert_close(m.sum(-1), torch.ones_like(m.sum(-1)), atol=1e-5, rtol=0)  # softmax rows
        assert m[1, :, :, cond.attention_mask[1] == 0].abs().max() == 0  # padded keys get no attention
    store.reset()


def test_attention_loss_exactly_zero_when_maps_equal_masks():
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(2, 3, 64, 64, generator=g) > 0.5).float()
    valid = torch.tensor([[True, True, False], [True, False, False]])
    maps = [F.interpolate(masks, size=(s, s), mode="area").flatten(2) for s in (16, 8, 8, 16)]
    loss = attention_mask_loss(maps, (16, 16), masks, valid)
    assert loss.item() == 0.0
    # off by 0.25 on one valid entity of one layer: mean over 3 valid entities and 4 layers
    maps[0] = maps[0].clone()
    maps[0][0, 1] += 0.25
    assert attention_mask_loss(maps, (16, 16), masks, valid).item() == pytest.approx(0.25 / 3 / 4, rel=1e-6)
    # invalid entities never count
    maps[1] = maps[1].clone()
    maps[1][0, 2] += 5.0
    assert attention_mask_loss(maps, (16, 16), masks, valid).item() == pytest.approx(0.25 / 3 / 4, rel=1e-6)
    assert attention_mask_loss(maps, (16, 16), masks, torch.zeros_like(valid)).item() == 0.0


def test_entity_maps_token_reduce():
    probs = torch.softmax(torch.randn(1, 2, 5, 6, generator=torch.Generator().manual_seed(1)), -1)
    etm = torch.tensor([[[0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 1, 0]]], dtype=torch.bool)
    s = entity_maps(probs, etm, "sum")
    m = entity_maps(probs, etm, "mean")
    ref = probs.mean(1)
    torch.testing.assert_close(s[0, 0], ref[0, :, 1] + ref[0, :, 2])
    torch.testing.assert_close(m[0, 0], (ref[0, :, 1] + ref[0, :, 2]) / 2)
    torch.testing.assert_close(s[0, 1], ref[0, :, 4])


def _grads(model, batch, weight, **kw):
    model.zero_grad(set_to_none=True)
    out = model.training_loss(batch, torch.Generator().manual_seed(5), AttnLossConfig(weight=weight, **kw))
    out["loss"].backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_attention_loss_gradient_reaches_unet_and_connector(model):
    model.train()
    batch = model.prepare(scene())
    base, _ = _grads(model, batch, 0.0)
    # weights 1 and 2 run the same (capture) path, so the gradient difference is exactly d L_attn
    with_attn, g1 = _grads(model, batch, 1.0)
    _, g2 = _grads(model, batch, 2.0)
    assert base["attn"].item() == 0.0 and with_attn["attn"].item() > 0.0
    assert with_attn["diffusion"].item() == pytest.approx(base["diffusion"].item(), rel=1e-6)
    diff = {n: (g2[n] - g1[n]).abs().sum().item() for n in g1}
    assert sum(v for n, v in diff.items() if n.startswith("connector.")) > 1e-6
    assert sum(v for n, v in diff.items() if n.startswith("decoder.unet.") and "attn2.to_k" in n) > 1e-6
    conv_out = sum(v for n, v in diff.items() if n.startswith("decoder.unet.conv_out"))
    assert conv_out < 1e-6  # downstream of every attention map: no attention-loss gradient
    # layer selection: only 8x8 layers -> a different (still positive) loss
    only8, _ = _grads(model, batch, 1.0, layers=[8])
    assert only8["attn"].item() > 0 and only8["attn"].item() != with_attn["attn"].item()
    assert model.attn_store.resolutions == {8, 16}
    with pytest.raises(UserError, match=r"matches no cross-attention layer.*\[8, 16\]"):
        _grads(model, batch, 1.0, layers=[32])


def _with_checkpointing(blocks):
    cfg = load_profile("tiny").model
    return MumuModel.from_config(cfg.model_copy(update={"decoder": cfg.decoder.model_copy(
        update={"gradient_checkpointing": blocks})}))


@pytest.mark.parametrize("blocks", [True, ["mid_block", "up_blocks.0"]], ids=["all", "selected"])
def test_gradient_checkpointing_matches(model, blocks):
    ckpt = _with_checkpointing(blocks)
    ckpt.load_state_dict(model.state_dict())
    model.train(), ckpt.train()
    batch = model.prepare(scene())
    a, ga = _grads(model, batch, 1.0)
    b, gb = _grads(ckpt, batch, 1.0)
    assert a["loss"].item() == pytest.approx(b["loss"].item(), rel=1e-6)
    assert set(ga) == set(gb)
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], atol=1e-5, rtol=1e-4)


def test_selective_checkpointing_recomputes_only_the_named_blocks(model):
    from models.decoder import unet_blocks

    def saved(m):  # activation bytes autograd keeps for backward in one training forward
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        m.train()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            m.training_loss(batch, torch.Generator().manual_seed(5), AttnLossConfig(weight=0.0))
        return total

    batch = model.prepare(scene())
    some = _with_checkpointing(["mid_block", "up_blocks.0"])
    for name in unet_blocks(some.decoder.unet):
        flags = {m.gradient_checkpointing for m in some.decoder.unet.get_submodule(name).modules()
                 if hasattr(m, "gradient_checkpointing")}
        assert flags == {name in ("mid_block", "up_blocks.0")}, name
    # fewer activations kept than without checkpointing, more than with every block recomputed
    assert saved(_with_checkpointing(True)) < saved(some) < saved(model)
    with pytest.raises(UserError, match=r"names \['up_blocks.9'\], not blocks of this UNet: \['down_blocks.0'"):
        _with_checkpointing(["up_blocks.0", "up_blocks.9"])
