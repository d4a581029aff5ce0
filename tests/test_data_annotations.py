"""Given annotations (annotations.jsonl beside folder inputs): annotated images take their boxes and masks
from there and skip the detector and segmenter; bad rows are quarantined inputs like bad caption rows."""

import json

import numpy as np
import pytest
from PIL import Image

from mumu import SAMPLES_DIR
from mumu.config import load_profile
from mumu.data import stages
from mumu.data.scenes import mask_to_rle, render_scene

EMOJI = SAMPLES_DIR.parent / "emoji"


class Recording:
    """Detector + segmenter that record which images they were asked about and answer one full box/mask."""

    def __init__(self):
        self.detected, self.segmented = [], []

    def detect(self, images, phrases):
        from mumu.data.oracle import OracleDetection

        self.detected += [im.size for im in images]
        return [[OracleDetection(j, (0.0, 0.0, im.size[0] / 2, im.size[1] / 2), 0.5) for j in range(len(p))]
                for im, p in zip(images, phrases)]

    def segment(self, images, boxes):
        self.segmented += [im.size for im in images]
        return [np.ones((len(b), im.size[1], im.size[0]), bool) for im, b in zip(images, boxes)]


def _row(file, scene, size):
    return {"image": file, "width": size, "height": size,
            "objects": [{"name": o.name, "box": list(o.box), "mask": mask_to_rle(m)} for o, m in zip(scene.objects, scene.masks)]}


@pytest.fixture
def folder(tmp_path):
    size = 128
    scenes = [render_scene(EMOJI, seed, size=size, n_objects=2) for seed in range(3)]
    root = tmp_path / "in"
    root.mkdir()
    captions, rows = [], []
    for i, sc in enumerate(scenes):
        sc.image.save(root / f"s{i}.png")
        captions.append({"image": f"s{i}.png", "caption": sc.caption})
    rows.append(_row("s0.png", scenes[0], size))  # good
    bad = _row("s1.png", scenes[1], size)
    bad["objects"][0]["mask"]["counts"] = [5, 5]  # does not cover the image
    rows.append(bad)
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in captions))
    (root / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n"
                                            + json.dumps({"image": "missing.png", "width": 1, "height": 1, "objects": []}) + "\n")
    return root, scenes


def test_annotated_images_skip_the_models_and_keep_their_ground_truth(folder, tmp_path):
    root, scenes = folder
    cfg = load_profile("tiny", {"data.ingest.max_side": 64, "data.compose.min_crop_side": 4}).data
    shard = stages.plan_shards(root, cfg.ingest)[0]
    models = Recording()
    work = stages.ingest(shard, cfg.ingest)
    work = stages.find_entities(work, cfg.entities)
    work = stages.segment(stages.detect(work, models), models)

    # 3 images + 3 bad annotation rows (bad mask, malformed JSON, missing image) = 6 inputs
    assert work.inputs == 6 and len(work.items) == 3
    reasons = {q.source: q.reason for q in work.quarantined}
    assert set(reasons) == {"annotations.jsonl:2", "annotations.jsonl:3", "annotations.jsonl:4"}
    assert "bad annotation for 's1.png'" in reasons["annotations.jsonl:2"]
    assert "malformed JSON" in reasons["annotations.jsonl:3"] and "not found" in reasons["annotations.jsonl:4"]
    # only s1 and s2 (no valid annotation) went to the models, at the decoded size (128 -> 64 px)
    assert models.detected == models.segmented == [(64, 64), (64, 64)]
    by_source = {it.source: it for it in work.items}
    s0 = by_source["s0.png"]
    assert [e.score for e in s0.entities] == [1.0, 1.0]
    for ent, obj, mask in zip(s0.entities, scenes[0].objects, s0.masks):
        assert ent.phrase.endswith(obj.name)
        assert all(abs(a - b / 2) <= 1 for a, b in zip(ent.box, obj.box))  # scaled with the image
        assert mask.shape == (64, 64)
    full = [np.asarray(Image.fromarray(m).resize((64, 64), Image.Resampling.NEAREST)) for m in scenes[0].masks]
    assert all(np.array_equal(a, b) for a, b in zip(s0.masks, full))
    assert work.counts["annotated"] == 1 and work.counts["boxes_given"] == work.counts["masks_given"] == 2
    assert work.counts["boxes"] == work.counts["masks"] == 4


def test_a_phrase_the_annotation_does_not_list_is_dropped(folder):
    root, scenes = folder
    cfg = load_profile("tiny").data
    work = stages.find_entities(stages.ingest(stages.plan_shards(root, cfg.ingest)[0], cfg.ingest), cfg.entities)
    s0 = next(i for i, it in enumerate(work.items) if it.source == "s0.png")
    item = work.items[s0]
    given = (item.given[0],)  # the annotation now lists only the first object
    items = list(work.items)
    items[s0] = item.replace(given=given)
    out = stages.detect(work.next(items), Recording())
    kept = next(it for it in out.items if it.source == "s0.png")
    assert [e.phrase.split()[-1] for e in kept.entities] == [scenes[0].objects[0].name.split()[-1]]
    assert out.counts["entities_unannotated"] == 1
