"""Entity ↔ token bookkeeping on real shard samples, in both prompt modes (MUMU: crop before its words;
UNIMO-G: segment in place of its words), from the data stage through the loader to the encoder."""

import json

import numpy as np
import pytest

from mumu import SAMPLES_DIR
from mumu.config import load_profile
from mumu.data import stages
from mumu.data.oracle import GroundTruth
from mumu.data.reader import read_shard
from mumu.data.scenes import render_scene
from mumu.train.data import iterate_examples


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    """One scene with three subjects, every crop kept, no text-only conversion."""
    root, out = tmp_path_factory.mktemp("in"), tmp_path_factory.mktemp("out")
    scene = next(s for seed in range(100) if len((s := render_scene(SAMPLES_DIR.parent / "emoji", seed,
                                                                   n_objects=3)).objects) == 3)
    oracle = GroundTruth()
    oracle.add_scene(scene)
    scene.image.save(root / "scene.png")
    (root / "captions.jsonl").write_text(json.dumps({"image": "scene.png", "caption": scene.caption}) + "\n")
    cfg = load_profile("tiny", {"data.compose.min_crop_side": 1}).data
    manifest, _ = stages.run_local(root, out, cfg, None, oracle, oracle, "test")
    path = out / manifest.shards[0].name
    record = next(read_shard(path)).record
    assert [e["in_prompt"] for e in record["entities"]] == [True, True, True]
    return str(path), record


@pytest.fixture(scope="module")
def model():
    from models.mumu_model import MumuModel

    return MumuModel.from_config(load_profile("tiny").model).eval()


def _example(shard_path, mode):
    stage = load_profile("tiny").train.tune.model_copy(update={
        "prompt_mode": mode, "text_only_share": 0.0, "batch_size": 1, "shuffle_buffer": 1})
    return next(iterate_examples([shard_path], stage, seed=0))[0]


def _words_after_runs(tokens, encoder, b=0):
    """The text (decoded) that follows each entity's image-token run, up to the next image."""
    ids = tokens.input_ids[b].tolist()
    out = []
    for k in range(int(tokens.entity_valid[b].sum())):
        end = int(tokens.entity_token_mask[b, k].nonzero().max()) + 1
        nxt = [i for i in range(end, len(ids)) if tokens.entity_token_mask[b, :, i].any()]
        stop = nxt[0] if nxt else len(ids)
        text = encoder.processor.tokenizer.decode(ids[end:stop], skip_special_tokens=True)
        out.append(" ".join(text.split()))
    return out


@pytest.mark.parametrize("mode", ["mumu", "unimo"])
def test_entities_map_to_their_image_tokens_and_masks(shard, model, mode):
    path, record = shard
    example = _example(path, mode)
    phrases = [e["phrase"] for e in record["entities"]]
    assert sum(not isinstance(s, str) for s in example.prompt) == 3

    batch = model.prepare([example])
    tokens = batch.tokens
    n = model.encoder.image_seq_len
    assert tokens.entity_valid[0].tolist() == [True, True, True]
    assert tokens.entity_token_mask[0].sum(-1).tolist() == [n, n, n]
    is_image = tokens.input_ids[0] == model.encoder.image_token_id
    assert bool((tokens.entity_token_mask[0].any(0) == is_image).all())

    after = _words_after_runs(tokens, model.encoder)
    for k, phrase in enumerate(phrases):
        if mode == "mumu":  # the crop stands before its words
            assert after[k].startswith(phrase), (after[k], phrase)
        else:  # the segment replaces its words
            assert not after[k].startswith(phrase), (after[k], phrase)
    if mode == "unimo":
        text = model.encoder.processor.tokenizer.decode(tokens.input_ids[0], skip_special_tokens=True)
        for phrase in phrases:
            assert f" {phrase} " not in f" {' '.join(text.split())} "

    # mask k is entity k's: its mass lies inside entity k's box (scaled to the training resolution)
    masks = batch.entity_masks[0].numpy()
    res, (w, h) = masks.shape[-1], (record["width"], record["height"])
    for k, entity in enumerate(record["entities"]):
        x0, y0, x1, y1 = entity["box"]
        ys, xs = np.nonzero(masks[k] > 0.5)
        assert len(xs) > 0
        assert x0 * res / w - 1 <= xs.mean() <= x1 * res / w + 1 and y0 * res / h - 1 <= ys.mean() <= y1 * res / h + 1
