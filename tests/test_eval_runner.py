"""The chunked resumable runner, scoring against independently computed values, and the report."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mumu.config import load_profile
from mumu.config.eval import BenchmarkConfig
from mumu.errors import UserError
from mumu.eval import metrics
from mumu.eval.benchmarks import build_benchmarks
from mumu.eval.items import chunk, load_rgb
from mumu.eval.runner import chunk_record_path, generate_benchmark, generate_chunk, item_seed, score, write_report
from tests.eval_fakes import CountingGenerator, PixelEncoders

COLOURS = {"blue_ball": (30, 60, 220), "green_box": (30, 200, 60), "red_star": (220, 40, 40)}


def make_bench(root: Path) -> Path:
    yy, xx = np.mgrid[:32, :32]
    shapes = {"blue_ball": (yy - 16) ** 2 + (xx - 16) ** 2 < 100, "green_box": (abs(yy - 16) < 8) & (abs(xx - 16) < 12),
              "red_star": (abs(yy - 16) + abs(xx - 16)) < 10}
    for name, colour in COLOURS.items():
        (root / "subjects" / name).mkdir(parents=True)
        img = np.full((32, 32, 3), 255, np.uint8)
        img[shapes[name]] = colour
        Image.fromarray(img).save(root / "subjects" / name / "0.png")
    (root / "prompts.json").write_text(json.dumps({
        "single": ["a {} in the jungle", "a {} on the beach"], "multi": ["a {0} and a {1}"]}))
    return root


def eval_cfg(**overrides):
    return load_profile("tiny", {f"eval.{k}": v for k, v in overrides.items()}).eval


@pytest.fixture
def single_bench(tmp_path):
    root = make_bench(tmp_path / "bench")
    return build_benchmarks(BenchmarkConfig(root=str(root), kinds=("single",)))[0]  # 3 subjects x 2 = 6 items


def test_resume_regenerates_only_missing_chunks(single_bench, tmp_path):
    cfg = eval_cfg(chunk_size=4, samples_per_prompt=2)  # 6 items -> chunks of 4 and 2
    out = tmp_path / "out"
    gen = CountingGenerator()
    first = generate_chunk(chunk(single_bench.items, 4)[1], gen, out, 1, cfg)
    assert first.generated and len(gen.calls) == 2 and chunk_record_path(out, 1).exists()
    before = {p: (out / p).read_bytes() for paths in first.images.values() for p in paths}

    results = generate_benchmark(single_bench, gen, out, cfg)
    assert [r.generated for r in results] == [True, False]  # chunk 1's record existed: not regenerated
    assert len(gen.calls) == 2 + 4
    assert {p: (out / p).read_bytes() for p in before} == before
    again = generate_benchmark(single_bench, gen, out, cfg)
    assert len(gen.calls) == 6 and not any(r.generated for r in again)

    # seeds depend on the item only, so a fresh run with another chunk size writes identical images
    other = tmp_path / "other"
    generate_benchmark(single_bench, CountingGenerator(), other, eval_cfg(chunk_size=5, samples_per_prompt=2))
    for item in single_bench.items:
        for k in range(2):
            rel = f"images/{item.id}/{k}.png"
            assert (other / rel).read_bytes() == (out / rel).read_bytes()
    assert gen.calls[2][2] == item_seed(cfg.seed, single_bench.items[0].id)
    record = json.loads(chunk_record_path(out, 0).read_text())
    assert record["item_ids"] == [i.id for i in single_bench.items[:4]] and record["samples_per_prompt"] == 2
    assert record["images"][single_bench.items[0].id] == [f"images/{single_bench.items[0].id}/{k}.png" for k in (0, 1)]


def test_a_failed_chunk_leaves_no_record_and_no_torn_files(single_bench, tmp_path):
    cfg = eval_cfg(chunk_size=4, samples_per_prompt=2)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="generator died"):
        generate_chunk(chunk(single_bench.items, 4)[0], CountingGenerator(fail_after=2), out, 0, cfg)
    assert not chunk_record_path(out, 0).exists()
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(files) == 4 and all(p.suffix == ".png" for p in files)  # 2 items x 2 samples, no temp files
    for p in files:
        assert Image.open(p).size == (32, 32)
    gen = CountingGenerator()
    assert generate_chunk(chunk(single_bench.items, 4)[0], gen, out, 0, cfg).generated and len(gen.calls) == 4

    with pytest.raises(UserError, match="different chunk"):
        generate_chunk(chunk(single_bench.items, 4)[0], gen, out, 0, eval_cfg(samples_per_prompt=3, chunk_size=4))
    with pytest.raises(ValueError, match="expected 2 PIL images"):
        generate_chunk(chunk(single_bench.items, 4)[1], lambda p, n, s: [], out, 1, cfg)
    with pytest.raises(UserError, match="chunk 1 has not been generated"):
        score(single_bench, out, PixelEncoders(), cfg)


def test_scores_equal_independent_computation_and_rank_generators(single_bench, tmp_path):
    cfg = eval_cfg(chunk_size=4, samples_per_prompt=2)
    enc = PixelEncoders()
    good, bad = tmp_path / "good", tmp_path / "bad"
    generate_benchmark(single_bench, CountingGenerator(noise=10), good, cfg)
    generate_benchmark(single_bench, CountingGenerator(noise=10, wrong_subject=True), bad, cfg)
    s_good, s_bad = score(single_bench, good, enc, cfg), score(single_bench, bad, enc, cfg)
    assert s_good["dino"] > 0.95 > s_bad["dino"] and s_good["clip_i"] > s_bad["clip_i"]
    assert s_good["fid"] < s_bad["fid"]
    assert (s_good["n_items"], s_good["n_images"], s_good["n_references"]) == (6, 12, 3)

    # independent recomputation from the files on disk
    dino, clip_t, gen_feats = [], [], []
    for item in single_bench.items:
        imgs = [load_rgb(good / f"images/{item.id}/{k}.png") for k in range(2)]
        g = enc.dino.features(imgs).numpy()
        r = enc.dino.features([load_rgb(item.references[0][0])]).numpy()
        dino += [float(g[k] @ r[0] / np.linalg.norm(g[k]) / np.linalg.norm(r[0])) for k in range(2)]
        t = enc.clip.text_embeds([item.text]).numpy()[0]
        clip_t += [float(g[k] @ t / np.linalg.norm(g[k])) for k in range(2)]
        gen_feats.append(g)
    assert s_good["dino"] == pytest.approx(np.mean(dino), abs=1e-6)
    assert s_good["clip_i"] == pytest.approx(np.mean(dino), abs=1e-6)  # same pixel features in the fake
    assert s_good["clip_t"] == pytest.approx(np.mean(clip_t), abs=1e-6)
    real = enc.dino.features([load_rgb(p) for p in single_bench.reference_images()]).numpy()
    assert s_good["fid"] == pytest.approx(metrics.fid_from_features(np.concatenate(gen_feats), real), rel=1e-6)
    assert s_good["items"][0]["dino"] == pytest.approx(dino[:2], abs=1e-6)

    # chance levels: each item's images against every item of another subject (its references, its text)
    unrelated_dino, unrelated_t = [], []
    for item, g in zip(single_bench.items, gen_feats):
        for other in single_bench.items:
            if other.subjects != item.subjects:
                r = enc.dino.features([load_rgb(other.references[0][0])]).numpy()[0]
                t = enc.clip.text_embeds([other.text]).numpy()[0]
                unrelated_dino += [float(g[k] @ r / np.linalg.norm(g[k]) / np.linalg.norm(r)) for k in range(2)]
                unrelated_t += [float(g[k] @ t / np.linalg.norm(g[k])) for k in range(2)]
    assert len(unrelated_dino) == 6 * 4 * 2  # 6 items x the 4 items of the 2 other subjects x 2 samples
    assert s_good["dino_chance"] == pytest.approx(np.mean(unrelated_dino), abs=1e-6)
    assert s_good["clip_i_chance"] == pytest.approx(np.mean(unrelated_dino), abs=1e-6)
    assert s_good["clip_t_chance"] == pytest.approx(np.mean(unrelated_t), abs=1e-6)
    assert s_good["dino"] > s_good["dino_chance"] + 0.15  # images of their subject: well above their chance
    assert s_bad["dino"] < s_bad["dino_chance"] + 0.1  # another subject's colours: no better than chance


def test_multi_subject_score_averages_over_subjects(tmp_path):
    root = make_bench(tmp_path / "bench")
    (multi,) = build_benchmarks(BenchmarkConfig(root=str(root), kinds=("multi",), multi_sizes=(2,)))
    cfg = eval_cfg(chunk_size=2, samples_per_prompt=1)
    generate_benchmark(multi, CountingGenerator(noise=0), tmp_path / "out", cfg)  # returns subject 0's image
    s = score(multi, tmp_path / "out", PixelEncoders(), cfg)
    enc = PixelEncoders()
    for item, rec in zip(multi.items, s["items"]):
        refs = [enc.dino.features([load_rgb(p)]).numpy() for p, in item.references]
        # the image IS subject 0's reference: similarity = mean(1, cos(subject0, subject1))
        expected = (1.0 + metrics.cosine_matrix(refs[0], refs[1])[0, 0]) / 2
        assert rec["dino"] == pytest.approx([expected], abs=1e-6)


def test_real_tiny_encoders_and_report_files(single_bench, tmp_path):
    from models.eval_encoders import EvalEncoders

    cfg = eval_cfg(chunk_size=4, samples_per_prompt=2)
    encoders = EvalEncoders.from_config(cfg)
    generate_benchmark(single_bench, CountingGenerator(noise=10), tmp_path / "good", cfg)
    generate_benchmark(single_bench, CountingGenerator(noise=10, wrong_subject=True), tmp_path / "bad", cfg)
    good = {**score(single_bench, tmp_path / "good", encoders, cfg), "run": "good"}
    bad = {**score(single_bench, tmp_path / "bad", encoders, cfg), "run": "swapped"}
    assert good["dino"] > bad["dino"] and good["clip_i"] > bad["clip_i"]
    assert all(np.isfinite(good[k]) for k in ("dino", "clip_i", "clip_t", "fid"))
    # Subject identification, with its chance level: the subject's own picture is found among all subjects;
    # with its colours swapped (same silhouette) it mostly is not.
    n_subjects = len(single_bench.subjects)
    assert good["subject_id_chance"] == bad["subject_id_chance"] == pytest.approx(1 / n_subjects)
    assert good["subject_id"] >= 0.9 and bad["subject_id"] <= 0.5, (good["subject_id"], bad["subject_id"])
    assert all(len(it["subject_id"]) == 2 for it in good["items"])

    report = write_report([good, bad], tmp_path / "report", cfg.report)
    assert report.json_path.exists() and report.markdown_path.exists()
    assert report.markdown_path.read_text() == report.markdown
    saved = json.loads(report.json_path.read_text())
    assert saved["rows"] == report.rows
    assert [(r["Run"], r["Benchmark"], r["Images"]) for r in report.rows] == [("good", "bench-single", 12),
                                                                             ("swapped", "bench-single", 12)]
    for row, s in zip(report.rows, (good, bad)):
        assert (row["DINO"], row["CLIP-I"], row["CLIP-T"], row["FID"]) == (s["dino"], s["clip_i"], s["clip_t"],
                                                                         s["fid"])
        line = next(ln for ln in report.markdown.splitlines() if ln.startswith(f"| {row['Run']} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        def with_ci(key, digits=3):  # "0.512 [0.480, 0.541]": the score and its bootstrap interval
            low, high = s["ci"][key]
            return f"{s[key]:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"

        assert cells[2:12] == [with_ci("subject_id", 2), f"{1 / n_subjects:.2f}", with_ci("dino"),
                               f"{s['dino_chance']:.3f}", with_ci("clip_i"), f"{s['clip_i_chance']:.3f}",
                               with_ci("clip_t"), f"{s['clip_t_chance']:.3f}", "n/a", with_ci("fid", 2)]
        assert s["copy_paste"] is None  # one image per subject and no held-out renderings: nothing to compare

    cell = cfg.report.grid_cell
    assert len(report.grids) == 2 * min(cfg.report.max_grids, 6)
    # grids show every subject before a second template of any (items come subject by subject)
    shown = [next(it for it in single_bench.items if it.id == g.stem).subjects[0] for g in report.grids[:3]]
    assert sorted(shown) == sorted(s.key for s in single_bench.subjects)
    for grid in report.grids:
        assert grid.exists() and Image.open(grid).size == ((1 + 2) * cell, cell)  # 1 reference | 2 samples
        assert f"]({grid.relative_to(tmp_path / 'report').as_posix()})" in report.markdown
    # the grid's first cell is the reference image, scaled into the cell
    first = Image.open(report.grids[0]).convert("RGB")
    ref = load_rgb(single_bench.items[0].references[0][0]).resize((cell, cell), Image.Resampling.NEAREST)
    assert np.abs(np.asarray(first.crop((0, 0, cell, cell)), float) - np.asarray(ref, float)).mean() < 1.0
    assert re.search(r"FID: Fréchet distance over \*\*clip\*\* features", report.markdown)


def test_evaluate_runs_the_configured_benchmarks_end_to_end(tmp_path):
    from mumu.eval.runner import evaluate

    root = make_bench(tmp_path / "bench")
    cfg = eval_cfg(chunk_size=3, samples_per_prompt=1, **{"benchmark.root": str(root), "benchmark.multi_sizes": [2]})
    gen = CountingGenerator()
    report = evaluate(gen, tmp_path / "eval", PixelEncoders(), cfg, run="run/1")
    # single: 3 subjects x 2 templates; multi: C(3,2)=3 pairs (<= 2 drawn in the tiny profile) x 1 template
    n_multi = min(3, cfg.benchmark.multi_combinations)
    assert len(gen.calls) == 6 + n_multi
    assert [(r["Benchmark"], r["Images"]) for r in report.rows] == [("bench-single", 6), ("bench-multi", n_multi)]
    assert all(g.is_relative_to(tmp_path / "eval" / "grids" / "run-1") for g in report.grids)
    assert (tmp_path / "eval" / "bench-single" / "chunks" / "chunk-00001.json").exists()
    evaluate(gen, tmp_path / "eval", PixelEncoders(), cfg, run="run/1")  # finished: nothing regenerated
    assert len(gen.calls) == 6 + n_multi


def test_batched_generation_gives_the_same_images_in_one_call_per_chunk(single_bench, tmp_path):
    cfg = eval_cfg(chunk_size=4, samples_per_prompt=2)
    per_item = CountingGenerator()
    generate_benchmark(single_bench, per_item, tmp_path / "a", cfg)
    batch_calls = []

    def batch_fn(prompts, n, seeds):
        batch_calls.append(len(prompts))
        single = CountingGenerator()
        return [single(p, n, s) for p, s in zip(prompts, seeds)]

    results = generate_benchmark(single_bench, None, tmp_path / "b", cfg, generate_batch_fn=batch_fn)
    assert batch_calls == [4, 2] and all(r.generated for r in results)
    for item in single_bench.items:
        for k in range(2):
            rel = f"images/{item.id}/{k}.png"
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    with pytest.raises(ValueError, match="2 results for 4 prompts"):
        generate_chunk(chunk(single_bench.items, 4)[0], None, tmp_path / "c", 0, cfg,
                       generate_batch_fn=lambda p, n, s: [[], []])


def test_unrelated_mean_equals_scoring_every_disjoint_pair():
    from mumu.eval.items import BenchItem
    from mumu.eval.runner import subject_vectors, unrelated_mean

    rng = np.random.default_rng(0)
    subject_refs = {"a": [0, 1], "b": [2], "c": [3, 4, 5], "d": [6]}  # rows of the reference features
    sets = [["a"], ["b"], ["a", "b"], ["c", "d"], ["b", "c"], ["d"]]
    items = [BenchItem(id=f"i{k}", kind="single" if len(s) == 1 else "multi", segments=["x"], text=f"t{k}",
                       subjects=s, names=s, references=[[f"{x}.png"] for x in s], template_index=0)
             for k, s in enumerate(sets)]
    item_rows = {it.id: list(range(3 * k, 3 * k + 3 - (k % 2))) for k, it in enumerate(items)}  # 2 or 3 images
    gen, refs, texts = rng.normal(size=(18, 5)), rng.normal(size=(7, 5)), rng.normal(size=(6, 5))

    def ref_rows(item):
        return [subject_refs[s] for s in item.subjects]

    expected_subject, expected_text = [], []
    for k, item in enumerate(items):
        for j, other in enumerate(items):
            if set(item.subjects).isdisjoint(other.subjects):
                rows = item_rows[item.id]
                expected_subject += metrics.subject_similarity(gen[rows], [refs[r] for r in ref_rows(other)]).tolist()
                expected_text += metrics.clip_t(gen[rows], np.repeat(texts[[j]], len(rows), axis=0)).tolist()
    # disjoint others per item: 4, 3, 2, 3, 2, 4; even items have 3 images, odd ones 2
    assert len(expected_subject) == 3 * (4 + 2 + 2) + 2 * (3 + 3 + 4)
    got = unrelated_mean(items, item_rows, gen, subject_vectors(items, refs, ref_rows))
    assert got == pytest.approx(np.mean(expected_subject), abs=1e-12)
    assert unrelated_mean(items, item_rows, gen, metrics.normalize(texts)) == pytest.approx(np.mean(expected_text), abs=1e-12)
    # no two items disjoint: no chance level
    assert unrelated_mean(items[:3:2], item_rows, gen, metrics.normalize(texts[:2])) is None


def test_report_states_the_protocol_and_every_metric_has_an_interval_around_it(tmp_path):
    from mumu.eval.runner import evaluate

    root = make_bench(tmp_path / "bench")
    cfg = eval_cfg(chunk_size=3, samples_per_prompt=2, **{"benchmark.root": str(root), "benchmark.kinds": ["single"],
                                                           "sampler.steps": 7, "sampler.guidance_scale": 4.5,
                                                           "seed": 11})
    report = evaluate(CountingGenerator(), tmp_path / "eval", PixelEncoders(), cfg)
    saved = json.loads(report.json_path.read_text())
    protocol = saved["protocol"]["bench-single"]
    assert protocol == saved["scores"][0]["protocol"]
    assert (protocol["sampler"], protocol["steps"], protocol["guidance_scale"], protocol["samples_per_prompt"],
            protocol["eval_seed"], protocol["prompt_mode"], protocol["references"]) == (
        "ddim", 7, 4.5, 2, 11, "mumu", "input")
    assert protocol["resolution"] == [32, 32]  # as generated (the fake returns the 32 px reference)
    assert protocol["input_images"] == {name: [str(root / "subjects" / name / "0.png")] for name in COLOURS}
    header = report.markdown.split("| Run |")[0]
    assert "DDIM 7 steps" in header and "guidance 4.5" in header and "32×32 px" in header
    assert "2 images per prompt" in header and "eval seed 11" in header and "MUMU" in header
    assert "- blue_ball: 0.png" in header
    for item in saved["scores"][0]["items"]:
        assert item["seed"] == item_seed(11, item["id"]) and item["inputs"] == [r[0] for r in item["references"]]

    # every per-item metric's interval holds its mean; FID's interval is of the refitted statistic
    s = saved["scores"][0]
    for key in ("dino", "clip_i", "clip_t", "subject_id"):
        low, high = s["ci"][key]
        assert low <= s[key] <= high, key
    assert s["ci"]["copy_paste"] is None and s["copy_paste"] is None  # one image a subject, not the toy
    # no subject has a second image: the ceiling is n/a, the copy row (the reference as output) is not
    ceiling, copy = s["reference_rows"]["ceiling"], s["reference_rows"]["copy"]
    assert (ceiling["dino"], ceiling["clip_i"], ceiling["copy_paste"]) == (None, None, None)
    assert copy["dino"] == pytest.approx(1.0) and copy["copy_paste"] is None
    ceiling_line = next(ln for ln in report.markdown.splitlines() if ln.startswith("| ↳ ceiling"))
    assert [c.strip() for c in ceiling_line.strip("|").split("|")][4:11] == ["n/a"] * 7
    assert s["ci"]["fid"][0] <= s["ci"]["fid"][1]
    # deterministic: a second scoring writes the same intervals
    again = evaluate(CountingGenerator(), tmp_path / "eval", PixelEncoders(), cfg)
    assert json.loads(again.json_path.read_text())["scores"][0]["ci"] == s["ci"]
