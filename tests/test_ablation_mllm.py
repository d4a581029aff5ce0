"""The toy ablation's MLLM alignment (bench/ablation_mllm.py): its targets, that it learns, and that what it saves is
what the arms load through the encoder's real loading path."""

import json

import pytest
import torch
from PIL import Image

from bench import ablation_mllm as A
from mumu import SAMPLES_DIR
from mumu.config import load_profile
from mumu.data.scenes import COLOUR_NAMES

EMOJI = SAMPLES_DIR.parent / "emoji"
FILES = ["1f335.webp", "1f345.webp", "1f34c.webp", "1f40b.webp", "1f411.webp", "1f416.webp"]  # 6 subjects


def test_quadrant_words_are_row_major_and_background_cells_take_the_whole_colour():
    img = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    for (x, y), colour in zip([(0, 0), (10, 0), (0, 10), (10, 10)], ["red", "green", "blue", "yellow"]):
        img.paste((*COLOUR_NAMES[colour], 255), (x, y, x + 10, y + 10))
    assert A.quadrant_words(img) == ["red", "green", "blue", "yellow"]
    small = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    small.paste((*COLOUR_NAMES["purple"], 255), (0, 0, 10, 10))  # the top-left cell only
    small.paste((*COLOUR_NAMES["pink"], 255), (0, 0, 10, 3))
    assert A.quadrant_words(small) == ["purple"] * 4  # three empty cells: the picture's own dominant colour


def test_prompt_pictures_are_cut_to_the_subject_and_shown_on_white():
    import random

    import numpy as np

    from mumu.data.scenes import _emoji_path

    emoji = Image.open(_emoji_path(EMOJI, FILES[0])).convert("RGBA")
    box = emoji.getchannel("A").point(lambda a: 255 if a > 127 else 0).getbbox()
    w, h = box[2] - box[0], box[3] - box[1]
    for seed in range(5):
        pic = A.prompt_picture(emoji, random.Random(seed), recolour=0.0)
        assert w <= pic.width <= w + 2 * int(0.12 * max(w, h)) and h <= pic.height <= h + 2 * int(0.12 * max(w, h))
        shown, alpha = np.asarray(A.on_white(pic)), np.asarray(pic.getchannel("A"))
        assert shown.shape == (*alpha.shape, 3) and (shown[alpha == 0] == 255).all()
        assert (alpha > 127).sum() == (np.asarray(emoji.getchannel("A")) > 127).sum()  # nothing of it cut off


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("mllm")
    cfg = load_profile("ablation").model.encoder
    summary = A.pretrain_mllm(cfg, EMOJI, FILES[:4], FILES[4:], out, steps=150, pool=256)
    return cfg, out, summary


def test_alignment_learns_colour_words(aligned):
    _, _, s = aligned
    assert s["loss_last"] < 0.8 * s["loss_first"]
    assert s["word_accuracy_train"] > 3 * s["word_chance"], s
    assert 0.0 <= s["word_accuracy_heldout"] <= 1.0


def test_saved_model_is_the_trained_one_and_its_language_model_is_untouched(aligned):
    from mumu.config.base import ModelSource

    cfg, out, summary = aligned
    loaded = A.build_encoder(cfg.model_copy(update={"model": ModelSource(pretrained=str(out / "model"))}))
    fresh = A.build_encoder(cfg)
    # the frozen language model is the random one of the config; the vision side is not
    assert torch.equal(loaded.model.get_input_embeddings().weight, fresh.model.get_input_embeddings().weight)
    assert not torch.equal(loaded.model.vision_model.embeddings.patch_embedding.weight,
                           fresh.model.vision_model.embeddings.patch_embedding.weight)
    # the same examples (deterministic under the seed) give the summary's accuracy with the loaded weights
    images, words = A.examples(EMOJI, FILES[:4], 256, 0, recolour=0.75)
    pixels, masks = loaded.preprocess_images(images)
    index = dict(zip(COLOUR_NAMES, A.colour_word_ids(loaded)))
    ids = torch.tensor([[index[w] for w in ws] for ws in words])
    table = loaded.model.get_input_embeddings().weight[A.colour_word_ids(loaded)]
    assert round(A.word_accuracy(loaded, pixels, masks, ids, table), 3) == summary["word_accuracy_train"]
    # a second call finds the finished stage and returns its summary without training
    again = A.pretrain_mllm(cfg, EMOJI, FILES[:4], FILES[4:], out, steps=150, pool=256)
    assert again == summary == json.loads((out / "summary.json").read_text())
