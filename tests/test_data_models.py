"""Data-stage model wrappers (captioner, detector, segmenter) on the tiny profile's models.

Each wrapper is checked against a direct transformers call made here, through the real
`from_pretrained` loading path, for batch invariance, thresholds, shapes/dtypes and seeding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mumu.config import ModelSource, load_profile
from models.captioner import Captioner, normalise_caption
from models.detector import Detection, Detector, box_iou, build_prompt, nms, phrase_token_masks
from models.segmenter import Segmenter

# Idefics2-8b's chat template (its processor's chat_template), to check the template path offline.
IDEFICS2_CHAT_TEMPLATE = (
    "{% for message in messages %}{{message['role'].capitalize()}}{% if message['content'][0]['type'] == 'image' %}"
    "{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}"
    "{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def scene(seed: int, width: int, height: int) -> Image.Image:
    """A noisy background with a few coloured rectangles and ellipses (deterministic)."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        x1, y1 = x0 + int(rng.integers(8, width // 2)), y0 + int(rng.integers(8, height // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)([x0, y0, x1, y1], fill=colour)
    return image


@pytest.fixture(scope="module")
def data_cfg():
    return load_profile("tiny").data


@pytest.fixture(scope="module")
def images():
    # Different sizes and aspect ratios (exercises padding/grouping), two of the same size.
    return [scene(0, 160, 120), scene(1, 90, 200), scene(2, 256, 256), scene(3, 256, 256)]


def count_forwards(model) -> list[int]:
    calls = [0]
    model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


# --- captioner -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def captioner(data_cfg):
    return Captioner.from_config(data_cfg.caption, "cpu")


def direct_captions(model, processor, images, prompt, max_new_tokens):
    processor.tokenizer.padding_side = "left"
    inputs = processor(images=[[im] for im in images], text=[prompt] * len(images), padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    texts = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return [" ".join(t.split()) for t in texts]


def test_captioner_matches_direct_generate_and_depends_on_the_image(captioner, images, data_cfg):
    got = captioner.caption(images)
    assert len(got) == len(images) and all(isinstance(c, str) and c for c in got)
    assert captioner.prompt == "<image>" + data_cfg.caption.prompt  # the tiny tokenizer has no chat template
    expected = direct_captions(captioner.model, captioner.processor, images, captioner.prompt,
                               data_cfg.caption.max_new_tokens)
    assert got == expected
    assert all(len(c.split()) == data_cfg.caption.max_new_tokens for c in got)  # word-level: 1 token = 1 word
    assert len(set(got)) > 1  # the tiny config's image features reach the text model


def test_captioner_batching_invariance(captioner, images):
    batched = Captioner(captioner.model, captioner.processor,
                        captioner.cfg.model_copy(update={"batch_size": 2}), "cpu").caption(images[:3])
    singles = [captioner.caption([image])[0] for image in images[:3]]
    assert batched == singles


def test_captioner_loads_through_from_pretrained(captioner, images, tmp_path):
    captioner.model.save_pretrained(tmp_path)
    captioner.processor.save_pretrained(tmp_path)
    cfg = captioner.cfg.model_copy(update={"model": ModelSource(pretrained=str(tmp_path))})
    loaded = Captioner.from_config(cfg, "cpu")
    assert loaded.prompt == captioner.prompt
    assert loaded.caption(images) == captioner.caption(images)


def test_captioner_seeded_and_chat_template(data_cfg, captioner, images):
    again = Captioner.from_config(data_cfg.caption, "cpu")
    assert again.caption(images[:2]) == captioner.caption(images[:2])
    other_model = data_cfg.caption.model.model_copy(update={"seed": 11})
    other = Captioner.from_config(data_cfg.caption.model_copy(update={"model": other_model}), "cpu")
    assert other.caption(images[:2]) != captioner.caption(images[:2])

    processor = again.processor
    processor.chat_template = IDEFICS2_CHAT_TEMPLATE
    templated = Captioner(again.model, processor, data_cfg.caption, "cpu")
    assert templated.prompt == f"User:<image>{data_cfg.caption.prompt}<end_of_utterance>\nAssistant:"
    assert templated.caption(images[:1]) == direct_captions(
        again.model, processor, images[:1], templated.prompt, data_cfg.caption.max_new_tokens)


def test_captioner_empty_output_is_empty_string(data_cfg, images):
    blank = Captioner.from_config(data_cfg.caption, "cpu")
    with torch.no_grad():
        blank.model.lm_head.weight.zero_()  # all logits equal: greedy picks id 0 (<unk>), a special token
    assert blank.caption(images[:2]) == ["", ""]
    assert normalise_caption("  a\n red \t box  ") == "a red box"


# --- detector --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector(data_cfg):
    return Detector.from_config(data_cfg.detect, "cpu")


def with_cfg(detector: Detector, **update) -> Detector:
    return Detector(detector.model, detector.processor, detector.cfg.model_copy(update=update), "cpu")


PHRASES = [["red box", "blue ball"], ["cat"], ["hot dog", "dog", "green box"], ["box"]]


def test_nms_known_survivors():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.5], [21, 21, 30, 30]],
                         dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95, 0.6])
    iou = box_iou(boxes, boxes)
    assert iou[0, 3].item() == pytest.approx(100 / 105) and iou[0, 1].item() == pytest.approx(81 / 119)
    assert iou[2, 4].item() == pytest.approx(81 / 100) and iou[0, 2].item() == 0
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert nms(boxes, scores, 0.75).tolist() == [3, 1, 2]  # iou(3,1) = 85.5/119.5 = 0.72 survives
    assert nms(boxes, scores, 0.9).tolist() == [3, 1, 2, 4]
    assert nms(boxes, scores, 0.9, limit=2).tolist() == [3, 1]
    assert nms(boxes[:0], scores[:0], 0.5).tolist() == []


def test_phrase_token_spans_handle_repeats_empties_and_truncation(detector):
    prompt, spans = build_prompt(["Dog", "hot dog", "dog", " ", "a.b?"])
    assert prompt == "dog. hot dog. dog. a b."
    assert spans[3] is None
    tok = detector.processor.tokenizer
    enc = tok(prompt, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    dot, dog, hot = tok.convert_tokens_to_ids(["."]), *tok.convert_tokens_to_ids(["dog", "hot"])
    assert dot == [1012] and ids[0] == 101 and ids[-1] == 102
    masks = phrase_token_masks(offsets, spans, len(ids))
    positions = [None if m is None else torch.nonzero(m).flatten().tolist() for m in masks]
    assert positions == [[1], [3, 4], [6], None, [8, 9]]
    assert [ids[i] for i in positions[1]] == [hot, dog] and ids[positions[0][0]] == ids[positions[2][0]] == dog
    # Truncation: a phrase cut short is dropped, not credited with a partial span.
    for max_length, expected in [(6, [[1], [3, 4], None, None, None]), (5, [[1], None, None, None, None])]:
        enc = tok(prompt, return_offsets_mapping=True, truncation=True, max_length=max_length)
        masks = phrase_token_masks(enc["offset_mapping"], spans, len(enc["input_ids"]))
        assert [None if m is None else torch.nonzero(m).flatten().tolist() for m in masks] == expected


def test_detector_matches_direct_transformers_call(detector, images):
    open_det = with_cfg(detector, box_threshold=0.0, text_threshold=0.0, nms_iou=1.0, max_boxes_per_phrase=4)
    image, phrases = images[0], ["red box", "blue ball"]
    got = open_det.detect([image], [phrases])[0]

    model, processor = detector.model, detector.processor
    inputs = processor(images=image, text="red box. blue ball.", return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    post = processor.post_process_grounded_object_detection(
        outputs, inputs["input_ids"], threshold=0.0, text_threshold=0.0, target_sizes=[(image.height, image.width)]
    )[0]
    boxes = post["boxes"].clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, image.width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, image.height)
    probs = outputs.logits[0].sigmoid()
    ids = inputs["input_ids"][0].tolist()
    assert ids[:7] == [101, *processor.tokenizer.convert_tokens_to_ids(["red", "box"]), 1012,
                       *processor.tokenizer.convert_tokens_to_ids(["blue", "ball"]), 1012]
    expected = []
    for k, token_positions in enumerate([[1, 2], [4, 5]]):
        score = probs[:, token_positions].max(dim=1).values
        for q in torch.argsort(score, descending=True, stable=True)[:4].tolist():  # ties: query order
            expected.append((k, boxes[q].tolist(), score[q].item()))
    assert [d.phrase_index for d in got] == [e[0] for e in expected]
    np.testing.assert_allclose([d.box for d in got], [e[1] for e in expected], atol=1e-3)
    np.testing.assert_allclose([d.score for d in got], [e[2] for e in expected], atol=1e-6)


def test_detector_thresholds_filter(detector, images):
    everything = with_cfg(detector, box_threshold=0.0, text_threshold=0.0, nms_iou=1.0, max_boxes_per_phrase=1000)
    all_dets = everything.detect(images, PHRASES)
    n_queries = detector.model.config.num_queries
    for dets, phrases in zip(all_dets, PHRASES):
        assert [sum(d.phrase_index == k for d in dets) for k in range(len(phrases))] == [n_queries] * len(phrases)
    scores = np.array([d.score for dets in all_dets for d in dets])
    cut = float(np.median(scores))
    for update in ({"box_threshold": cut}, {"text_threshold": cut}):
        filtered = with_cfg(everything, **update).detect(images, PHRASES)
        kept = [[(d.phrase_index, d.box, d.score) for d in dets] for dets in filtered]
        expected = [[(d.phrase_index, d.box, d.score) for d in dets if d.score >= cut] for dets in all_dets]
        assert kept == expected
        assert 0 < sum(map(len, kept)) < len(scores)


def test_detector_nms_and_max_boxes(detector, images):
    dets = with_cfg(detector, box_threshold=0.0, text_threshold=0.0, nms_iou=0.3, max_boxes_per_phrase=3).detect(
        images, PHRASES)
    for image, per_image, phrases in zip(images, dets, PHRASES):
        for k in range(len(phrases)):
            mine = [d for d in per_image if d.phrase_index == k]
            assert 1 <= len(mine) <= 3
            assert [d.score for d in mine] == sorted((d.score for d in mine), reverse=True)
            boxes = torch.tensor([d.box for d in mine])
            iou = box_iou(boxes, boxes)
            assert (iou[~torch.eye(len(mine), dtype=torch.bool)] <= 0.3).all()
        for d in per_image:
            x0, y0, x1, y1 = d.box
            assert 0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height


def test_detector_tiny_profile_output_shape_and_types(detector, images, data_cfg):
    dets = detector.detect(images, PHRASES)
    assert len(dets) == len(images)
    for per_image, phrases in zip(dets, PHRASES):
        assert per_image, "the tiny profile's thresholds must let boxes through"
        assert all(isinstance(d, Detection) and 0 <= d.phrase_index < len(phrases) for d in per_image)
        assert all(isinstance(d.score, float) and d.score >= data_cfg.detect.box_threshold for d in per_image)
        assert all(len(d.box) == 4 and all(isinstance(v, float) for v in d.box) for d in per_image)
        for k in range(len(phrases)):
            assert sum(d.phrase_index == k for d in per_image) <= data_cfg.detect.max_boxes_per_phrase


def test_detector_batching_invariance(detector, images):
    batched = with_cfg(detector, batch_size=2, max_boxes_per_phrase=3).detect(images, PHRASES)
    singles = [with_cfg(detector, max_boxes_per_phrase=3).detect([im], [ph])[0] for im, ph in zip(images, PHRASES)]
    for a, b in zip(batched, singles):
        assert [d.phrase_index for d in a] == [d.phrase_index for d in b]
        np.testing.assert_allclose([d.box for d in a], [d.box for d in b], atol=1e-3)
        np.testing.assert_allclose([d.score for d in a], [d.score for d in b], atol=1e-5)


def test_detector_skips_images_without_phrases(detector, images):
    fresh = Detector(detector.model, detector.processor, detector.cfg, "cpu")
    calls = count_forwards(fresh.model)
    assert fresh.detect(images[:2], [[], ["", " . ?"]]) == [[], []]
    assert calls[0] == 0
    assert fresh.detect([], []) == []
    dets = fresh.detect(images[:2], [[], ["", "box"]])
    assert dets[0] == [] and {d.phrase_index for d in dets[1]} == {1} and calls[0] == 1
    with pytest.raises(ValueError, match="2 images but 1 phrase lists"):
        fresh.detect(images[:2], [["box"]])


def test_detector_loads_through_from_pretrained_and_is_seeded(detector, images, data_cfg, tmp_path):
    detector.model.save_pretrained(tmp_path)
    detector.processor.save_pretrained(tmp_path)
    loaded = Detector.from_config(data_cfg.detect.model_copy(update={"model": ModelSource(pretrained=str(tmp_path))}))
    tok = loaded.processor.tokenizer
    assert tok.convert_tokens_to_ids(["[CLS]", "[SEP]", ".", "?"]) == [101, 102, 1012, 1029]
    reference = detector.detect(images, PHRASES)
    assert loaded.detect(images, PHRASES) == reference
    assert Detector.from_config(data_cfg.detect).detect(images, PHRASES) == reference
    other = data_cfg.detect.model_copy(update={"model": data_cfg.detect.model.model_copy(update={"seed": 12})})
    assert Detector.from_config(other).detect(images, PHRASES) != reference


# --- segmenter -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def segmenter(data_cfg):
    return Segmenter.from_config(data_cfg.segment, "cpu")


BOXES = [[(10.0, 10.0, 80.0, 60.0), (0.0, 0.0, 160.0, 120.0)], [(5.0, 20.0, 60.0, 150.0)], [],
         [(30.0, 40.0, 200.0, 220.0), (100.0, 10.0, 250.0, 90.0), (0.0, 128.0, 128.0, 256.0)]]


def direct_masks(model, processor, image, boxes, threshold, binarize=True):
    inputs = processor(images=image, input_boxes=[[list(b) for b in boxes]], return_tensors="pt")
    original_sizes, reshaped = inputs.pop("original_sizes"), inputs.pop("reshaped_input_sizes")
    with torch.no_grad():
        outputs = model(**inputs, multimask_output=False)
    masks = processor.post_process_masks(outputs.pred_masks, original_sizes, reshaped, mask_threshold=threshold,
                                         binarize=binarize)[0]
    return masks[:, 0].numpy()


def test_segmenter_matches_direct_call_shapes_and_dtypes(segmenter, images):
    got = segmenter.segment(images, BOXES)
    assert len(got) == len(images)
    for image, boxes, masks in zip(images, BOXES, got):
        assert masks.dtype == np.bool_ and masks.shape == (len(boxes), image.height, image.width)
        if boxes:
            expected = direct_masks(segmenter.model, segmenter.processor, image, boxes, 0.0)
            np.testing.assert_array_equal(masks, expected)
            assert all(0 < m.mean() < 1 for m in masks)  # not trivially empty or full


def test_segmenter_threshold_filters(segmenter, images):
    image, boxes = images[3], BOXES[3]
    logits = direct_masks(segmenter.model, segmenter.processor, image, boxes, 0.0, binarize=False)
    cut = float(np.median(logits))
    higher = Segmenter(segmenter.model, segmenter.processor,
                       segmenter.cfg.model_copy(update={"mask_threshold": cut}), "cpu").segment([image], [boxes])[0]
    np.testing.assert_array_equal(higher, logits > cut)
    base = segmenter.segment([image], [boxes])[0]
    assert (higher <= base).all() and higher.sum() != base.sum()


def test_segmenter_batching_invariance_and_empty_images(segmenter, images):
    batched = Segmenter(segmenter.model, segmenter.processor,
                        segmenter.cfg.model_copy(update={"batch_size": 2}), "cpu").segment(images, BOXES)
    singles = [segmenter.segment([im], [bx])[0] for im, bx in zip(images, BOXES)]
    for a, b in zip(batched, singles):
        np.testing.assert_array_equal(a, b)

    fresh = Segmenter(segmenter.model, segmenter.processor, segmenter.cfg, "cpu")
    calls = count_forwards(fresh.model)
    empty = fresh.segment(images[:2], [[], []])
    assert [m.shape for m in empty] == [(0, 120, 160), (0, 200, 90)] and calls[0] == 0
    with pytest.raises(ValueError, match="a box must be"):
        fresh.segment(images[:1], [[(1.0, 2.0, 3.0)]])


def test_segmenter_loads_through_from_pretrained_and_is_seeded(segmenter, images, data_cfg, tmp_path):
    segmenter.model.save_pretrained(tmp_path)
    segmenter.processor.save_pretrained(tmp_path)
    loaded = Segmenter.from_config(data_cfg.segment.model_copy(update={"model": ModelSource(pretrained=str(tmp_path))}))
    reference = segmenter.segment(images, BOXES)
    for a, b in zip(loaded.segment(images, BOXES), reference):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(Segmenter.from_config(data_cfg.segment).segment(images, BOXES), reference):
        np.testing.assert_array_equal(a, b)
    other = data_cfg.segment.model_copy(update={"model": data_cfg.segment.model.model_copy(update={"seed": 13})})
    assert any((a != b).any() for a, b in zip(Segmenter.from_config(other).segment(images, BOXES), reference))
