"""Idefics2's vision tower on its own (models/vision_tower.py): loaded alone from a checkpoint of either Idefics2
class it holds exactly the whole model's tower, gives the prompt encoder's features, and is all cache-features
loads when it caches vision features only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from mumu.config import ModelSource, load_profile
from mumu.train import feature_stage
from mumu.train.features import cache_spec
from models.encoder import PromptEncoder
from models.hf import build_idefics2


def saved_idefics2(folder, class_name: str):
    """A tiny Idefics2 of `class_name`, saved as a checkpoint → (model, its vision tower module)."""
    model, processor = build_idefics2(ModelSource(config={}, seed=3), model_cls=getattr(transformers, class_name))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, (model.model if class_name == "Idefics2ForConditionalGeneration" else model).vision_model


@pytest.mark.parametrize("class_name", ["Idefics2Model", "Idefics2ForConditionalGeneration"])
def test_the_tower_alone_from_a_checkpoint_is_the_whole_models_and_gives_the_encoders_features(tmp_path, class_name):
    from models.vision_tower import VisionTower

    model, whole_tower = saved_idefics2(tmp_path, class_name)
    tower = VisionTower.load(ModelSource(pretrained=str(tmp_path)))
    assert type(tower.module).__name__ == "Idefics2VisionTransformer"
    ours, theirs = tower.module.state_dict(), whole_tower.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    n_tower = sum(p.numel() for p in tower.module.parameters())
    assert n_tower == sum(p.numel() for p in whole_tower.parameters()) < sum(p.numel() for p in model.parameters()) / 2

    cfg = load_profile("tiny", {"model.encoder.model.pretrained": str(tmp_path), "model.encoder.model.config": None})
    encoder = PromptEncoder(cfg.model.encoder).eval()
    rng = np.random.default_rng(0)  # three sizes: the batch pads two of them
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(40, 30), (64, 64), (20, 50)]]
    with torch.no_grad():
        want = encoder.vision_grids(*encoder.preprocess_images(images))
        got = tower.grids(*tower.preprocess(images))
    assert [g.shape for g in got] == [w.shape for w in want] and len(got) == 3
    assert all(torch.equal(g, w) for g, w in zip(got, want)) and not torch.equal(got[0], got[1])


def test_cache_features_for_vision_only_loads_the_tower_not_the_encoder(tmp_path, monkeypatch):
    saved_idefics2(tmp_path, "Idefics2Model")
    cfg = load_profile("tiny", {"model.encoder.model.pretrained": str(tmp_path), "model.encoder.model.config": None})
    spec = cache_spec(cfg.model, cfg.train)
    assert "vision" in spec["parts"] and "prompt" not in spec["parts"]  # the tiny recipe trains the LM (LoRA)
    monkeypatch.setattr(PromptEncoder, "__init__", lambda *a, **k: pytest.fail("built the whole encoder"))
    parts = feature_stage.FrozenParts(cfg.model, spec)
    assert parts.encoder is None and type(parts.vision.module).__name__ == "Idefics2VisionTransformer"


def test_idefics2_8bs_tower_alone_is_a_twentieth_of_the_model():
    """The published config on the meta device (no weights): what VisionTower.load would read of idefics2-8b."""
    from models.hf import empty_weights
    from models.vision_tower import VisionTower

    source = ModelSource(pretrained="HuggingFaceM4/idefics2-8b", dtype="bfloat16")
    with empty_weights():
        tower = VisionTower.load(source)
        whole, _ = build_idefics2(source, model_cls=transformers.Idefics2Model)
    n_tower, n_whole = (sum(p.numel() for p in m.parameters()) for m in (tower.module, whole))
    assert tower.module.dtype == torch.bfloat16 and tower.patch_size == 14
    assert 0.39e9 < n_tower < 0.45e9 and 7.9e9 < n_whole < 8.5e9
