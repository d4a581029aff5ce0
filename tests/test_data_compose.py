"""Compose: exact crops/segments/masks, MUMU vs UNIMO-G prompts, crop rules, text-only share."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_schemas import ImageSegment, TextSegment
from mumu.config.data import ComposeConfig, EntitiesConfig
from mumu.data.compose import build_prompts, compose_sample, crop_rules, int_box
from mumu.data.entities import find_entities
from mumu.data.oracle import GroundTruth
from mumu.data.scenes import render_scene
from mumu.data.work import Entity

EMOJI = Path(__file__).resolve().parent.parent / "mumu" / "samples" / "emoji"
SMALL_CROPS = ComposeConfig(min_crop_side=8)


def noise_image(w=64, h=48, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def compose(image, caption, entities, masks, cfg=SMALL_CROPS, key="k"):
    return compose_sample(
        key=key, source="src", image=image, caption=caption, caption_source="given",
        entities=entities, masks=masks, cfg=cfg,
    )


def test_int_box_covers_clips_and_rejects_empty():
    assert int_box((1.2, 2.7, 10.1, 20.0), 64, 48) == (1, 2, 11, 20)
    assert int_box((-5, -1, 100, 100), 64, 48) == (0, 0, 64, 48)
    assert int_box((10, 10, 10, 30), 64, 48) is None
    assert int_box((float("nan"), 0, 5, 5), 64, 48) is None


def test_crop_segment_and_mask_pixels_are_exact():
    image = noise_image()
    box = (5, 7, 37, 40)
    mask = np.zeros((48, 64), bool)
    mask[10:30, 8:20] = True
    mask[0:3, 0:3] = True  # outside the box: in the full mask, not in the segment
    composed, _ = compose(image, "a dog", [Entity("dog", (2, 5), box, 0.9)], mask[None])
    src = np.asarray(image)
    crop = np.asarray(composed.images["crop_0.png"])
    assert np.array_equal(crop, src[7:40, 5:37])
    seg = np.asarray(composed.images["segment_0.png"])
    inside = mask[7:40, 5:37]
    assert np.array_equal(seg[inside], src[7:40, 5:37][inside])
    assert (seg[~inside] == 255).all()
    full = composed.images["mask_0.png"]
    assert full.mode == "L" and full.size == image.size
    assert np.array_equal(np.asarray(full), mask.astype(np.uint8) * 255)
    rec = composed.record.entities[0]
    assert rec.box == box and rec.char_span == (2, 5) and rec.score == 0.9 and rec.in_prompt


def test_mumu_inserts_before_and_unimo_replaces():
    caption = "a cactus and a hot dog on a blue background"
    ents = find_entities(caption, EntitiesConfig())
    assert [e.phrase for e in ents] == ["cactus", "hot dog"]
    image = noise_image(200, 100)
    boxed = [Entity(e.phrase, e.span, b, 1.0) for e, b in zip(ents, [(0, 0, 50, 50), (60, 10, 120, 90)])]
    composed, _ = compose(image, caption, boxed, np.ones((2, 100, 200), bool))
    r = composed.record
    assert r.prompt_mumu == [
        TextSegment(text="a "), ImageSegment(ref="crop_0.png", entity=0), TextSegment(text="cactus and a "),
        ImageSegment(ref="crop_1.png", entity=1), TextSegment(text="hot dog on a blue background"),
    ]
    assert r.prompt_unimo == [
        TextSegment(text="a "), ImageSegment(ref="segment_0.png", entity=0), TextSegment(text=" and a "),
        ImageSegment(ref="segment_1.png", entity=1), TextSegment(text=" on a blue background"),
    ]
    # MUMU keeps every word: its text segments concatenate back to the caption.
    assert "".join(s.text for s in r.prompt_mumu if s.type == "text") == caption


def test_crop_rules_small_large_and_limit():
    cfg = ComposeConfig(min_crop_side=10, max_crop_fraction=0.75, max_images_per_prompt=3)
    boxes = [(0, 0, 9, 50), (0, 0, 100, 80), (0, 0, 20, 20), (0, 0, 30, 30), (10, 10, 40, 40), (0, 0, 50, 50)]
    # 100x100 image: 9 px side too small; 100x80 = 80% > 75% too large; then 3 kept; the 4th over the limit.
    assert crop_rules(boxes, 100, 100, cfg) == ["small", "large", "kept", "kept", "kept", "limit"]
    assert crop_rules([(0, 0, 75, 100)], 100, 100, cfg) == ["kept"]  # exactly 75% is allowed
    caption = "a dog and a cat"
    ents = [Entity("dog", (2, 5), (0, 0, 5, 5), 1.0), Entity("cat", (12, 15), (10, 10, 40, 40), 1.0)]
    composed, counts = compose(noise_image(100, 100), caption, ents, np.ones((2, 100, 100), bool), cfg)
    assert [e.in_prompt for e in composed.record.entities] == [False, True]
    assert [s.ref for s in composed.record.prompt_mumu if s.type == "image"] == ["crop_1.png"]
    assert "crop_0.png" in composed.images  # dropped from the prompt, still in the sample
    assert counts == {"crops_small": 1, "crops_kept": 1}


def test_min_crop_area_is_mumus_150_square_rule():
    # MUMU drops crops "with total area less than 150x150 pixels": a 120 x 200 crop (24,000 px) stays even
    # though one side is under 150, a 149 x 151 one (22,499 px) goes.
    cfg = ComposeConfig(min_crop_side=1, min_crop_area=150 * 150, max_crop_fraction=0.75)
    boxes = [(0, 0, 120, 200), (0, 0, 149, 151), (0, 0, 150, 150)]
    assert crop_rules(boxes, 1000, 1000, cfg) == ["kept", "small", "kept"]


def test_image_share_draws_a_random_subset_per_entity():
    """UNIMO-G substitutes a random subset of the entities: about `image_share` of them, the same on a re-run."""
    boxes = [(0, 0, 20, 20)] * 6
    cfg = ComposeConfig(min_crop_side=1, max_images_per_prompt=6, image_share=0.5)
    decisions = [crop_rules(boxes, 100, 100, cfg, key=f"sample-{k}") for k in range(400)]
    kept = [d.count("kept") for d in decisions]
    assert set(sum(decisions, [])) == {"kept", "unchosen"}
    assert abs(sum(kept) / (6 * 400) - 0.5) < 0.05
    assert len(set(kept)) >= 5  # subsets of every size, not one fixed pattern
    assert decisions == [crop_rules(boxes, 100, 100, cfg, key=f"sample-{k}") for k in range(400)]
    assert crop_rules(boxes, 100, 100, cfg.model_copy(update={"image_share": 1.0}), key="x") == ["kept"] * 6
    # The draw comes before the limit: a 3-image limit still fills from the drawn entities.
    limited = crop_rules(boxes, 100, 100, cfg.model_copy(update={"max_images_per_prompt": 1}), key="sample-0")
    assert limited.count("kept") == min(1, kept[0]) and "unchosen" in limited
    # In the sample: undrawn entities keep their crop, segment and mask but stay out of both prompts.
    key = next(f"sample-{k}" for k, d in enumerate(decisions) if d[:2] == ["unchosen", "kept"])
    ents = [Entity("dog", (2, 5), (0, 0, 20, 20), 1.0), Entity("cat", (12, 15), (30, 30, 60, 60), 1.0)]
    composed, counts = compose(noise_image(100, 100), "a dog and a cat", ents, np.ones((2, 100, 100), bool),
                               cfg, key=key)
    assert [e.in_prompt for e in composed.record.entities] == [False, True]
    assert [s.ref for s in composed.record.prompt_unimo if s.type == "image"] == ["segment_1.png"]
    assert counts == {"crops_unchosen": 1, "crops_kept": 1} and "crop_0.png" in composed.images


def test_every_sample_keeps_its_multimodal_prompts_and_its_caption():
    # The text-only share is drawn at training time (train.<stage>.text_only_share): no key is made
    # text-only here, so every sample can be trained with its images or its caption.
    ent = [Entity("dog", (2, 5), (0, 0, 40, 40), 1.0)]
    for i in range(200):
        composed, counts = compose(noise_image(), "a dog", ent, np.ones((1, 48, 64), bool), key=f"{i:016x}")
        r = composed.record
        assert not r.text_only and "text_only" not in counts and r.caption == "a dog"
        assert r.prompt_mumu == [TextSegment(text="a "), ImageSegment(ref="crop_0.png", entity=0),
                                 TextSegment(text="dog")]
        assert r.prompt_unimo == [TextSegment(text="a "), ImageSegment(ref="segment_0.png", entity=0)]


def test_bad_masks_are_rejected():
    with pytest.raises(ValueError, match="masks shape"):
        compose(noise_image(), "a dog", [Entity("dog", (2, 5), (0, 0, 40, 40), 1.0)], np.ones((1, 10, 10), bool))


@pytest.mark.parametrize("seed,overlap", [(3, False), (11, False), (24, True), (30, True)])
def test_emoji_scenes_compose_to_ground_truth_exactly(seed, overlap):
    scene = render_scene(EMOJI, seed, n_objects=3 if overlap else None, overlap=overlap)
    gt = GroundTruth()
    gt.add_scene(scene)
    ents = find_entities(scene.caption, EntitiesConfig())
    assert [e.phrase for e in ents] == [o.name for o in scene.objects]
    dets = gt.detect([scene.image], [[e.phrase for e in ents]])[0]
    boxed = [Entity(e.phrase, e.span, int_box(d.box, 256, 256), d.score) for e, d in zip(ents, dets)]
    masks = gt.segment([scene.image], [[b.box for b in boxed]])[0]
    composed, _ = compose(scene.image, scene.caption, boxed, masks)
    src = np.asarray(scene.image)
    for i, (obj, gt_mask) in enumerate(zip(scene.objects, scene.masks)):
        x0, y0, x1, y1 = obj.box
        assert composed.record.entities[i].box == obj.box
        assert np.array_equal(np.asarray(composed.images[f"crop_{i}.png"]), src[y0:y1, x0:x1])
        assert np.array_equal(np.asarray(composed.images[f"mask_{i}.png"]) > 0, gt_mask)
        seg = np.asarray(composed.images[f"segment_{i}.png"])
        m = gt_mask[y0:y1, x0:x1]
        assert np.array_equal(seg[m], src[y0:y1, x0:x1][m]) and (seg[~m] == 255).all()
        # the tight box of the visible mask touches all four sides
        assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any()
    assert not (scene.masks.sum(axis=0) > 1).any()  # occluded pixels belong to the top object only
    assert any(o.visible < 1.0 for o in scene.objects) == overlap


def test_build_prompts_without_entities_is_the_caption():
    mumu, unimo = build_prompts("just words", [], {})
    assert mumu == unimo == [TextSegment(text="just words")]


def test_shrink_with_count_keeps_a_scene_of_three_about_as_full_as_a_scene_of_one():
    scale = (0.5, 0.7)
    for n in (1, 2, 3):
        for seed in range(4):
            scene = render_scene(EMOJI, seed, size=128, n_objects=n, scale=scale, shrink_with_count=True)
            sides = [o.paste[2] for o in scene.objects]
            assert len(sides) == n
            assert all(int(128 * scale[0] / n**0.5) <= s <= int(128 * scale[1] / n**0.5) for s in sides), (n, sides)
    # the default keeps the old draw: every emoji of a scene of three at the full scale
    plain = render_scene(EMOJI, 0, size=256, n_objects=3, scale=(0.3, 0.4))
    assert all(int(256 * 0.3) <= o.paste[2] <= int(256 * 0.4) for o in plain.objects)


def test_recolour_rotates_the_hue_of_the_emoji_and_nothing_else():
    import colorsys

    plain = render_scene(EMOJI, 3, size=128, n_objects=2, scale=(0.4, 0.5))
    assert np.array_equal(np.asarray(render_scene(EMOJI, 3, size=128, n_objects=2, scale=(0.4, 0.5),
                                                  recolour=0.0).image), np.asarray(plain.image))
    shifted = render_scene(EMOJI, 3, size=128, n_objects=2, scale=(0.4, 0.5), recolour=1.0)
    # placements, masks and caption do not move: only the emoji's pixels change
    assert shifted.caption == plain.caption and [o.box for o in shifted.objects] == [o.box for o in plain.objects]
    assert np.array_equal(shifted.masks, plain.masks)
    a, b = np.asarray(plain.image, np.float64) / 255, np.asarray(shifted.image, np.float64) / 255
    pasted = np.zeros(a.shape[:2], bool)
    for x, y, side in (o.paste for o in plain.objects):
        pasted[y:y + side, x:x + side] = True
    assert np.array_equal(a[~pasted], b[~pasted])  # the background is untouched
    assert (np.abs(a - b).max(-1)[plain.masks.any(0)] > 2 / 255).mean() > 0.5
    for mask in plain.masks:
        hsv_a = np.array([colorsys.rgb_to_hsv(*p) for p in a[mask]])
        hsv_b = np.array([colorsys.rgb_to_hsv(*p) for p in b[mask]])
        vivid = (hsv_a[:, 1] > 0.4) & (hsv_a[:, 2] > 0.4)  # hue is only defined where there is colour
        assert vivid.sum() > 50
        turn = (hsv_b[vivid, 0] - hsv_a[vivid, 0]) % 1.0
        # one rotation per emoji, of 60-300 degrees (43-213 of PIL's 256 steps); rounding spreads it a little
        assert 43 / 256 - 0.03 <= np.median(turn) <= 213 / 256 + 0.03
        assert np.mean(np.abs(((turn - np.median(turn)) + 0.5) % 1.0 - 0.5) < 0.03) > 0.9
        assert np.abs(hsv_a[vivid, 2] - hsv_b[vivid, 2]).mean() < 0.05  # brightness kept


def test_colour_words_name_the_dominant_colours_of_the_opaque_pixels():
    from mumu.data.scenes import COLOUR_NAMES, colour_words

    img = Image.new("RGBA", (10, 10), (0, 0, 0, 0))  # transparent black: not counted
    img.paste((*COLOUR_NAMES["green"], 255), (0, 0, 10, 6))  # 60 green
    img.paste((*COLOUR_NAMES["brown"], 255), (0, 6, 10, 9))  # 30 brown, 10 transparent
    assert colour_words(img) == ["green", "brown"]
    assert colour_words(img, min_share=0.4) == ["green"] and colour_words(img, max_words=1) == ["green"]
    img.paste((250, 30, 30, 255), (0, 6, 10, 9))  # near red, not a palette value
    assert colour_words(img) == ["green", "red"]
    with pytest.raises(ValueError, match="no opaque"):
        colour_words(Image.new("RGBA", (4, 4), (0, 0, 0, 0)))


def test_nearest_colour_names_is_the_nearest_by_squared_distance_ties_to_the_first():
    from mumu.data.scenes import COLOUR_NAMES, nearest_colour_names

    palette = np.array(list(COLOUR_NAMES.values()), np.int64)
    pixels = np.random.default_rng(0).integers(0, 256, (20000, 3)).astype(np.uint8)
    midpoints = ((palette[:, None] + palette[None]) // 2).reshape(-1, 3).astype(np.uint8)  # ties among them
    for rgb in (pixels, midpoints, palette.astype(np.uint8)):
        distances = ((rgb[:, None, :].astype(np.int64) - palette) ** 2).sum(-1)
        assert (nearest_colour_names(rgb) == distances.argmin(-1)).all()  # argmin: the first of equal distances
    assert list(nearest_colour_names(palette.astype(np.uint8))) == list(range(len(palette)))
    assert nearest_colour_names(pixels.reshape(100, 200, 3)).shape == (100, 200)


def test_describe_colours_names_each_emoji_by_the_colours_it_is_drawn_in():
    from mumu.data.scenes import colour_words

    plain = render_scene(EMOJI, 3, size=128, n_objects=2, scale=(0.4, 0.5), recolour=1.0)
    described = render_scene(EMOJI, 3, size=128, n_objects=2, scale=(0.4, 0.5), recolour=1.0, describe_colours=True)
    assert np.array_equal(np.asarray(described.image), np.asarray(plain.image))
    assert np.array_equal(described.masks, plain.masks)
    for o, p, mask in zip(described.objects, plain.objects, described.masks):
        words = o.name.removesuffix(" " + p.name).split(" and ")
        assert o.name.endswith(" " + p.name) and 1 <= len(words) <= 2
        # the words are the colours of the pixels drawn (recoloured), not of the emoji file
        drawn = Image.fromarray(np.dstack([np.asarray(described.image), mask.astype(np.uint8) * 255]), "RGBA")
        assert words[0] == colour_words(drawn)[0]
    from mumu.data.scenes import article

    phrases = [f"{article(o.name)} {o.name}" for o in described.objects]
    assert described.caption == f"{phrases[0]} and {phrases[1]} on {plain.background}"
