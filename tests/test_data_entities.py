"""Vocabulary entity extraction, and the bundled samples it runs on by default."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mumu import FLUENT_EMOJI_DIR
from mumu.config import load_profile
from mumu.config.data import EntitiesConfig
from mumu.data import stages
from mumu.data.entities import BUNDLED_VOCABULARY, Vocabulary, find_entities, same_phrase
from mumu.data.oracle import GroundTruth, image_id
from mumu.data.scenes import mask_to_rle, render_scene, rle_to_mask
from mumu.errors import UserError

SAMPLES = Path(__file__).resolve().parent.parent / "mumu" / "samples"
SCENES = SAMPLES / "scenes"


def phrases(caption, **kw):
    return [e.phrase for e in find_entities(caption, EntitiesConfig(**kw))]


def test_longest_match_word_boundaries_plurals_and_order():
    assert phrases("A Teddy Bear next to a bear") == ["Teddy Bear", "bear"]
    assert phrases("two hot dogs and a dog") == ["hot dogs", "dog"]
    assert phrases("boxes of cherries near the buses") == ["boxes", "cherries", "buses"]
    assert phrases("a catalogue, a dogma and a scatter plot") == []  # no matches inside words
    assert phrases("a red car, a shiny blue bicycle") == ["car", "bicycle"]  # adjectives stay out
    assert phrases("a dog, a cat, a cow and a pig") == ["dog", "cat", "cow"]  # max_entities=3, caption order
    assert phrases("a dog, a cat, a cow and a pig", max_entities=4) == ["dog", "cat", "cow", "pig"]
    assert phrases("a dog chasing another dog and dogs") == ["dog"]  # one entity per distinct phrase
    caption = "The Cactus, then an ice cream."
    for e in find_entities(caption, EntitiesConfig()):
        assert caption[e.span[0] : e.span[1]] == e.phrase
    assert phrases("a cactus on a blue background") == ["cactus"]  # colours and "background" are not objects


def test_same_phrase_ignores_case_and_plural():
    assert same_phrase("Hot Dogs", "hot dog") and same_phrase("buses", "bus") and same_phrase("cherries", "cherry")
    assert not same_phrase("hot dog", "dog") and not same_phrase("bus", "bug") and not same_phrase("", "")


def test_bundled_vocabulary_sources_and_custom_file(tmp_path):
    vocab = Vocabulary.from_file(BUNDLED_VOCABULARY)
    for p in ["traffic light", "hot dog", "teddy bear", "cactus", "t-rex", "sushi", "guitar"]:
        assert tuple(p.split()) in vocab.phrases
    for p in ["a", "the", "blue", "background", "photo"]:
        assert (p,) not in vocab.phrases
    custom = tmp_path / "v.txt"
    custom.write_text("# my objects\nred balloon\n")
    assert phrases("a red balloon and a dog", vocabulary=str(custom)) == ["red balloon"]
    with pytest.raises(UserError, match="entity vocabulary .* not found"):
        find_entities("a dog", EntitiesConfig(vocabulary=str(tmp_path / "missing.txt")))


def test_vlm_method_is_rejected_with_a_clear_message():
    with pytest.raises(UserError, match="method 'vlm' is not implemented: entities must be spans of the caption"):
        load_profile("tiny", {"data.entities.method": "vlm"})


def _annotations():
    return [json.loads(ln) for ln in (SCENES / "annotations.jsonl").read_text().splitlines()]


def test_entities_of_the_bundled_captions_are_the_emoji_names():
    rows = _annotations()
    captions = {json.loads(ln)["image"] for ln in (SCENES / "captions.jsonl").read_text().splitlines()}
    # three are raw inputs: left for the VLM captioner, the detector and the segmenter
    assert len(rows) == 21 and {r["image"] for r in rows} == captions
    for row in rows:
        assert phrases(row["caption"]) == [o["name"] for o in row["objects"]], row["caption"]


def test_bundled_samples_match_their_ground_truth_and_regenerate(tmp_path):
    names = json.loads((SAMPLES / "emoji" / "names.json").read_text())
    assert 55 <= len(names) <= 80 and (SAMPLES / "emoji" / "LICENSE").exists()
    # The clone stays light: the pipeline's samples under 3 MB, the unseen-subjects task's 390 emoji under 2 MB.
    fluent = sum(p.stat().st_size for p in FLUENT_EMOJI_DIR.rglob("*") if p.is_file())
    assert sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file()) - fluent < 3_000_000
    assert fluent < 2_000_000 and len(list((FLUENT_EMOJI_DIR / "images").glob("*.webp"))) == 390
    assert (FLUENT_EMOJI_DIR / "LICENSE").exists()
    rows = _annotations()
    for i, row in enumerate(rows[:6]):  # re-rendering is deterministic: same pixels, boxes and masks
        scene = render_scene(SAMPLES / "emoji", i)
        assert np.array_equal(np.asarray(Image.open(SCENES / row["image"]).convert("RGB")), np.asarray(scene.image))
        assert scene.caption == row["caption"]
        for o, m in zip(row["objects"], scene.masks):
            assert mask_to_rle(m) == o["mask"] and np.array_equal(rle_to_mask(o["mask"]), m)
            ys, xs = np.nonzero(m)
            assert o["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_bundled_samples_run_through_the_pipeline_with_ground_truth(tmp_path):
    """The 21 annotated scenes take their given boxes and masks; the 3 raw ones go to the (oracle) models."""
    gt, vlm = GroundTruth(), {}
    rows = _annotations()
    for i in range(len(rows), 24):  # the raw scenes: re-rendered for their ground truth
        scene = render_scene(SAMPLES / "emoji", i)
        assert np.array_equal(np.asarray(Image.open(SCENES / f"scene_{i:03d}.png").convert("RGB")), np.asarray(scene.image))
        rows.append({"caption": scene.caption, "objects": [{"name": o.name, "box": list(o.box), "mask": mask_to_rle(m)}
                                                           for o, m in zip(scene.objects, scene.masks)]})
        gt.add_scene(scene)
        vlm[image_id(scene.image)] = scene.caption

    class Captioner:
        def caption(self, images):
            return [vlm[image_id(im)] for im in images]

    cfg = load_profile("tiny").data
    manifest, _ = stages.run_local(SCENES, tmp_path, cfg, Captioner(), gt, gt, "h")
    assert (manifest.inputs, manifest.written, manifest.quarantined) == (24, 24, 0)
    assert manifest.counts["captioned_by_vlm"] == 3 and manifest.counts["annotated"] == 21
    given = sum(len(r["objects"]) for r in rows[:21])
    n_objects = sum(len(r["objects"]) for r in rows)
    assert manifest.counts["boxes_given"] == manifest.counts["masks_given"] == given
    assert manifest.counts["boxes"] == manifest.counts["masks"] == n_objects - given > 0
    assert manifest.counts["entities"] == n_objects
