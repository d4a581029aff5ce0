"""The copy-paste score, the toy benchmark's held-out renderings and the report's ceiling and copy rows."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mumu.config import load_profile
from mumu.config.eval import BenchmarkConfig, CopyingConfig
from mumu.eval import metrics
from mumu.eval.benchmarks import build_benchmarks, emoji_subjects
from mumu.eval.copying import copy_paste_score, other_real_images
from mumu.eval.held_out import render_held_out
from mumu.eval.items import load_rgb
from mumu.eval.runner import evaluate, generate_benchmark, score
from tests.eval_fakes import CountingGenerator, PixelEncoders

SUBJECTS = {"blue ball": (30, 60, 220), "green box": (30, 200, 60), "red star": (220, 40, 40)}
BACKGROUNDS = [(250, 250, 250), (40, 40, 60), (240, 220, 60), (120, 60, 160), (60, 160, 200), (200, 120, 60)]


def photo(name: str, seed: int, size: int = 32) -> Image.Image:
    """A "photo" of a subject: its shape and colour at a seeded position on a seeded light background, as
    different photos of one object differ in framing and setting."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(10, size - 10, 2)
    shape = {"blue ball": (yy - cy) ** 2 + (xx - cx) ** 2 < 50, "green box": (abs(yy - cy) < 6) & (abs(xx - cx) < 8),
             "red star": (abs(yy - cy) + abs(xx - cx)) < 8}[name]
    img = np.empty((size, size, 3), np.uint8)
    img[:] = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    img[shape] = SUBJECTS[name]
    return Image.fromarray(img)


def make_photo_bench(root: Path, photos: int = 4) -> Path:
    """The folder layout with several photos per subject (as DreamBench's 4-6)."""
    for s, name in enumerate(SUBJECTS):
        folder = root / "subjects" / name.replace(" ", "_")
        folder.mkdir(parents=True)
        for k in range(photos):
            photo(name, 100 * s + k).save(folder / f"{k}.png")
    (root / "prompts.json").write_text(json.dumps({"single": ["a {} in the jungle"], "multi": ["a {0} and a {1}"]}))
    return root


class SubjectDrawer:
    """A subject-driven generator: draws a *new* photo of the prompt's subject (unseen framing and setting)."""

    def __call__(self, prompt, n, seed):
        text = " ".join(p for p in prompt if isinstance(p, str))
        name = next(name for name in SUBJECTS if name in text)
        return [photo(name, 10_000 + seed + k) for k in range(n)]


def cfg_with(**overrides):
    return load_profile("tiny", {f"eval.{k}": v for k, v in overrides.items()}).eval


def test_copy_paste_score_on_features_high_for_the_reference_near_zero_for_another_image():
    rng = np.random.default_rng(0)
    subject = rng.normal(size=512)
    images = subject + rng.normal(size=(7, 512))  # 7 photos: the subject plus each photo's own variation
    given, others, unseen = images[0], images[1:6], images[6]
    pasted = copy_paste_score(given[None], [given], [others])[0]
    drawn = copy_paste_score(unseen[None], [given], [others])[0]
    # pasted: 1 - cos(photo, other photos) ~ 1 - |s|²/(|s|² + σ²) = 0.5; a new photo: ~0 (cos to any photo alike)
    assert pasted == pytest.approx(0.5, abs=0.05)
    assert abs(drawn) < 0.05
    # the formula, written out, on two outputs at once
    outputs = np.stack([given, unseen])
    expected = metrics.cosine_matrix(outputs, given)[:, 0] - metrics.cosine_matrix(outputs, others).mean(axis=1)
    np.testing.assert_allclose(copy_paste_score(outputs, [given[None]], [others]), expected, atol=1e-12)


def test_copy_paste_score_averages_over_subjects_and_rejects_missing_others():
    out = np.array([[1.0, 0.0]])
    # subject A: cos to given 1, to others (0, 1) 0 -> 1; subject B: cos to given 0, to others (1, 0) 1 -> -1
    score = copy_paste_score(out, [np.array([1.0, 0.0]), np.array([0.0, 1.0])],
                             [np.array([[0.0, 1.0]]), np.array([[1.0, 0.0]])])
    np.testing.assert_allclose(score, [0.0])
    with pytest.raises(ValueError, match="other real image"):
        copy_paste_score(out, [np.array([1.0, 0.0])], [np.zeros((0, 2))])
    with pytest.raises(ValueError, match="one given image"):
        copy_paste_score(out, [np.array([1.0, 0.0])], [])


def test_other_real_images_prefer_the_subjects_own_photos_over_renderings():
    assert other_real_images(["a/0.jpg", "a/1.jpg", "a/2.jpg"], "a/1.jpg", ["r/0.png"]) == ["a/0.jpg", "a/2.jpg"]
    assert other_real_images(["a/0.jpg"], "a/0.jpg", ["r/0.png", "r/1.png"]) == ["r/0.png", "r/1.png"]
    assert other_real_images(["a/0.jpg"], "a/0.jpg") == []


def test_held_out_renderings_are_seeded_scenes_of_the_emoji_not_the_reference(tmp_path):
    subject = emoji_subjects()[2]
    cfg = CopyingConfig(held_out_renderings=3)
    paths = render_held_out(subject, tmp_path / "a", cfg)
    again = render_held_out(subject, tmp_path / "b", cfg)
    assert len(paths) == 3 and [Path(p).name for p in paths] == ["0.png", "1.png", "2.png"]
    assert [Path(p).read_bytes() for p in paths] == [Path(p).read_bytes() for p in again]  # deterministic
    other_seed = render_held_out(subject, tmp_path / "c", CopyingConfig(held_out_renderings=3, seed=1))
    assert [Path(p).read_bytes() for p in other_seed] != [Path(p).read_bytes() for p in paths]
    reference = np.asarray(load_rgb(subject.images[0]), np.float64)
    emoji = np.asarray(Image.open(subject.images[0]).convert("RGBA"))
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"), np.float64)
        assert image.shape == reference.shape  # the reference's own size
        assert np.abs(image - reference).mean() > 10  # another framing and background, not the reference
        # a scene background (its corners share a scene colour, not the reference's white) with the emoji on it
        assert not np.allclose(image[0, 0], 255)
        opaque_colours = emoji[emoji[..., 3] > 200][:, :3].mean(axis=0)
        centre_share = np.linalg.norm(image.reshape(-1, 3)[:, None] - opaque_colours, axis=-1).min(axis=1) < 60
        assert centre_share.mean() > 0.05


def test_score_copy_paste_high_for_pasting_near_the_ceiling_for_new_photos(tmp_path):
    root = make_photo_bench(tmp_path / "bench")
    (bench,) = build_benchmarks(BenchmarkConfig(root=str(root), kinds=("single",)))
    cfg = cfg_with(chunk_size=4, samples_per_prompt=2)
    enc = PixelEncoders()
    generate_benchmark(bench, CountingGenerator(noise=0), tmp_path / "paste", cfg)  # returns the prompt's image
    generate_benchmark(bench, SubjectDrawer(), tmp_path / "draw", cfg)
    pasted, drawn = score(bench, tmp_path / "paste", enc, cfg), score(bench, tmp_path / "draw", enc, cfg)
    ceiling, copy = pasted["reference_rows"]["ceiling"], pasted["reference_rows"]["copy"]
    assert drawn["reference_rows"] == pasted["reference_rows"]  # rows of real images: the same for every run

    # Pasting the reference scores exactly the copy row; drawing new photos of the subject, about the ceiling.
    assert pasted["copy_paste"] == pytest.approx(copy["copy_paste"], abs=1e-9)
    assert pasted["copy_paste"] > 0.3 and abs(drawn["copy_paste"] - ceiling["copy_paste"]) < 0.1
    assert abs(drawn["copy_paste"]) < 0.1 and abs(ceiling["copy_paste"]) < 0.1
    assert copy["dino"] == pytest.approx(1.0) and ceiling["dino"] < 0.9  # DINO alone rewards pasting
    assert abs(drawn["dino"] - ceiling["dino"]) < 0.1

    # independent recomputation of one item: subject blue_ball, photo 0 given, photos 1-3 its others
    feats = {k: enc.dino.features([load_rgb(root / "subjects/blue_ball" / f"{k}.png")]).numpy()[0] for k in range(4)}
    cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    item = bench.items[0]
    assert item.given_images() == [str(root / "subjects/blue_ball/0.png")]
    record = next(it for it in drawn["items"] if it["id"] == item.id)
    assert record["others"] == [[str(root / "subjects/blue_ball" / f"{k}.png") for k in (1, 2, 3)]]
    for k, path in enumerate(record["images"]):
        out = enc.dino.features([load_rgb(path)]).numpy()[0]
        expected = cos(out, feats[0]) - np.mean([cos(out, feats[j]) for j in (1, 2, 3)])
        assert record["copy_paste"][k] == pytest.approx(expected, abs=1e-6)
    ceiling_item = ceiling["items"][item.id]
    assert ceiling_item["dino"] == pytest.approx(np.mean([cos(feats[j], feats[0]) for j in (1, 2, 3)]), abs=1e-6)
    assert ceiling_item["copy_paste"] == pytest.approx(np.mean(
        [cos(feats[j], feats[0]) - np.mean([cos(feats[j], feats[i]) for i in (1, 2, 3) if i != j]) for j in (1, 2, 3)]),
        abs=1e-6)
    assert ceiling_item["clip_t"] is None and copy["items"][item.id]["clip_t"] is not None


def test_toy_benchmark_uses_held_out_renderings_and_the_report_prints_both_rows(tmp_path):
    cfg = cfg_with(chunk_size=8, samples_per_prompt=1, **{"benchmark.max_subjects": 3, "benchmark.max_templates": 1,
                                                         "benchmark.kinds": ["single"]})
    report = evaluate(CountingGenerator(noise=5), tmp_path / "eval", PixelEncoders(), cfg, run="pasting")
    saved = json.loads(report.json_path.read_text())
    (scored,) = saved["scores"]
    renders = sorted((tmp_path / "eval" / "toy-single" / "held_out").glob("*/*.png"))
    assert len(renders) == 3 * cfg.copying.held_out_renderings
    assert all(len(group) == cfg.copying.held_out_renderings and "held_out" in group[0]
               for it in scored["items"] for group in it["others"])
    rows = scored["reference_rows"]
    # The fake pastes its input (with noise): far above what new renderings of the subject score.
    assert scored["copy_paste"] > rows["ceiling"]["copy_paste"] + 0.1
    assert rows["copy"]["copy_paste"] > rows["ceiling"]["copy_paste"] + 0.1
    assert [r["Run"] for r in saved["reference_rows"]] == ["↳ ceiling: other real images of the subject",
                                                           "↳ copy: the prompt's reference image as output"]
    lines = report.markdown.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| pasting |"))
    assert lines[start + 1].startswith("| ↳ ceiling") and lines[start + 2].startswith("| ↳ copy")
    copy_cells = [c.strip() for c in lines[start + 2].strip("|").split("|")]
    assert copy_cells[4].startswith(f"{rows['copy']['dino']:.3f} [")
    assert copy_cells[10].startswith(f"{rows['copy']['copy_paste']:.3f}")
    run_cells = [c.strip() for c in lines[start].strip("|").split("|")]
    assert run_cells[10].startswith(f"{scored['copy_paste']:.3f} [")
