"""Benchmark construction: counts, prompt form, references, ordering, the bundled toy instance."""

import json
import math
import re
from pathlib import Path

import pytest
from PIL import Image

from mumu.config import load_profile
from mumu.config.eval import BenchmarkConfig
from mumu.data.scenes import PLAIN
from mumu.errors import UserError
from mumu.eval.benchmarks import EMOJI_DIR, build_benchmarks
from mumu.eval.items import ImageRef, chunk

REPO = Path(__file__).resolve().parent.parent


def make_folder(root: Path, prompts: dict | None = None) -> Path:
    counts = {"backpack_dog": 2, "red_cube": 1, "teapot": 1}
    for subject, n in counts.items():
        (root / "subjects" / subject).mkdir(parents=True)
        for k in range(n):
            Image.new("RGB", (16, 16), (40 * k, 100, 200)).save(root / "subjects" / subject / f"{k:02d}.png")
    (root / "subjects" / "teapot" / "notes.txt").write_text("ignored: not an image")
    if prompts is not None:
        (root / "prompts.json").write_text(json.dumps(prompts))
    return root


PROMPTS = {
    "single": ["a {} in the jungle", "a red {}", "a {} on the beach"],
    "multi": ["a {0} and a {1} on the beach", "a {0} next to a {1}", "a {0}, a {1} and a {2} on a table"],
    "names": {"backpack_dog": "backpack"},
}


def test_single_counts_prompt_form_and_names(tmp_path):
    root = make_folder(tmp_path / "bench", PROMPTS)
    (single,) = build_benchmarks(BenchmarkConfig(root=str(root), kinds=("single",), prompt_mode="unimo"))
    # subject images (2 + 1 + 1) x templates (3)
    assert single.name == "bench-single" and len(single.items) == 4 * 3 and single.prompt_mode == "unimo"
    first = single.items[0]
    assert first.id == "single-backpack-dog-00-t00"
    assert first.segments[0] == "a " and first.segments[2] == " in the jungle"
    assert isinstance(first.segments[1], ImageRef)
    assert first.prompt_string() == f"a <image:{root}/subjects/backpack_dog/00.png> in the jungle"
    assert first.text == "a backpack in the jungle"  # names map; CLIP-T text has the name, not the image
    assert single.items[3].text == "a backpack in the jungle" and single.items[3].segments[1].image.endswith("01.png")
    assert [i.text for i in single.items[6:9]] == ["a red cube in the jungle", "a red red cube",
                                                   "a red cube on the beach"]
    assert first.references == [[str(root / "subjects/backpack_dog/00.png")]]  # "input": the prompt's image
    loaded = first.load_prompt()
    assert isinstance(loaded[1], Image.Image) and loaded[1].mode == "RGB" and loaded[0] == "a "
    ids = [i.id for i in single.items]
    assert len(set(ids)) == len(ids)


def test_subject_references_and_multi_counts(tmp_path):
    root = make_folder(tmp_path / "bench", PROMPTS)
    single, multi = build_benchmarks(BenchmarkConfig(root=str(root), references="subject", multi_combinations=2))
    assert single.items[0].references == [[str(root / "subjects/backpack_dog/00.png"),
                                           str(root / "subjects/backpack_dog/01.png")]]
    # size 2: C(3,2)=3 combinations, 2 drawn, x 2 two-subject templates; size 3: the 1 combination x 1 template
    assert len(multi.items) == 2 * 2 + 1 * 1
    three = multi.items[-1]
    assert three.id == "multi3-backpack-dog+red-cube+teapot-t02"
    assert three.text == "a backpack, a red cube and a teapot on a table"
    assert sum(isinstance(s, ImageRef) for s in three.segments) == 3 and len(three.references) == 3
    two = multi.items[0]
    assert len(two.subjects) == 2 and two.text.startswith("a ") and " and a " in two.text
    # deterministic under the seed; another seed may pick other pairs but the same counts
    again = build_benchmarks(BenchmarkConfig(root=str(root), references="subject", multi_combinations=2))[1]
    assert again == multi
    assert len(build_benchmarks(BenchmarkConfig(root=str(root), multi_combinations=9))[1].items) == 3 * 2 + 1


def test_limits_and_default_prompts(tmp_path):
    root = make_folder(tmp_path / "bench")  # no prompts.json: the bundled DreamBench-style templates
    bundled = json.loads((REPO / "mumu/samples/bench/prompts.json").read_text())
    single, multi = build_benchmarks(BenchmarkConfig(root=str(root), max_subjects=2, max_templates=3))
    assert len(single.items) == (2 + 1) * 3
    assert single.items[0].text == bundled["single"][0].format("backpack dog")
    two = sum(1 for t in bundled["multi"] if "{2}" not in t)
    assert len(multi.items) == 1 * min(3, two)  # one pair of the 2 subjects; no 3-subject combination


def test_bad_layouts_and_templates_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no subjects/ folder"):
        build_benchmarks(BenchmarkConfig(root=str(tmp_path)))
    root = make_folder(tmp_path / "b", {"single": ["a {} and a {}"], "multi": []})
    with pytest.raises(UserError, match="exactly one placeholder"):
        build_benchmarks(BenchmarkConfig(root=str(root), kinds=("single",)))
    root2 = make_folder(tmp_path / "c", {"single": ["a {x}"]})
    with pytest.raises(UserError, match="placeholders must be"):
        build_benchmarks(BenchmarkConfig(root=str(root2), kinds=("single",)))
    with pytest.raises(UserError, match="names.json is missing"):
        build_benchmarks(BenchmarkConfig(), emoji_dir=tmp_path / "nowhere")


def test_chunking_keeps_order_and_sizes():
    assert chunk(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert chunk([], 3) == []
    with pytest.raises(ValueError):
        chunk([1], 0)


def test_bundled_toy_benchmark_reads_the_emoji_samples():
    names = json.loads((EMOJI_DIR / "names.json").read_text())
    cfg = BenchmarkConfig(max_subjects=4, max_templates=2, multi_combinations=2)
    single, multi = build_benchmarks(cfg)
    assert (single.name, multi.name) == ("toy-single", "toy-multi")
    first_files = sorted(names)[:4]
    assert [s.name for s in single.subjects] == [names[f] for f in first_files]
    assert all(Path(p).is_relative_to(EMOJI_DIR) for s in single.subjects for p in s.images)
    assert len(single.items) == 4 * 2
    assert single.items[0].text == f"a {names[first_files[0]]} on a white background"
    assert len(multi.items) == 2 * 2 + 2 * 2  # sizes 2 and 3: 2 combinations x 2 templates each
    assert math.comb(4, 3) == 4 and len({i.id for i in multi.items}) == len(multi.items)


def test_toy_templates_speak_the_toy_scenes_words():
    """The toy model learns from rendered scenes; its benchmark asks only for backgrounds those scenes show."""
    toy = json.loads((EMOJI_DIR / "prompts.json").read_text())
    vocabulary = set((REPO / "mumu/resources/words.txt").read_text().split())  # the tiny encoder's words
    for template in toy["single"] + toy["multi"]:
        match = re.search(r" on an? (\w+) background$", template)
        assert match and match.group(1) in PLAIN, template
        assert set(re.sub(r"\{\d?\}|,", " ", template).split()) <= vocabulary, template
    assert {t.count("{") for t in toy["multi"]} == {2, 3}


def test_prompts_take_the_tune_stage_prompt_mode(tmp_path):
    """MUMU tunes on "<crop> word" and UNIMO-G on "<segment>" in place of the word: evaluation asks the same."""
    root = make_folder(tmp_path / "bench", PROMPTS)
    image = f"{root}/subjects/backpack_dog/00.png"
    (mumu,) = build_benchmarks(BenchmarkConfig(root=str(root), kinds=("single",), prompt_mode="mumu"))
    assert mumu.prompt_mode == "mumu"
    assert mumu.items[0].prompt_string() == f"a <image:{image}> backpack in the jungle"
    assert mumu.items[0].segments == ["a ", ImageRef(image=image), " backpack in the jungle"]
    assert mumu.items[0].text == "a backpack in the jungle"  # CLIP-T text does not depend on the mode
    (multi,) = build_benchmarks(BenchmarkConfig(root=str(root), kinds=("multi",), prompt_mode="mumu",
                                                multi_combinations=9))
    three = multi.items[-1]
    assert [s for s in three.segments if isinstance(s, str)] == [
        "a ", " backpack, a ", " red cube and a ", " teapot on a table"]

    # From a profile: the checkpoint's tune mode decides, unless the benchmark names one.
    assert load_profile("tiny").train.tune.prompt_mode == "mumu"
    assert load_profile("tiny").eval.benchmark.prompt_mode == "mumu"
    unimo = load_profile("tiny", {"train.tune.prompt_mode": "unimo"})
    assert unimo.eval.benchmark.prompt_mode == "unimo"
    (bench,) = build_benchmarks(unimo.eval.benchmark.model_copy(update={"root": str(root), "kinds": ("single",)}))
    assert bench.items[0].prompt_string() == f"a <image:{image}> in the jungle"
    assert load_profile("tiny", {"train.tune.prompt_mode": "text"}).eval.benchmark.prompt_mode == "mumu"
    explicit = load_profile("tiny", {"train.tune.prompt_mode": "unimo", "eval.benchmark.prompt_mode": "mumu"})
    assert explicit.eval.benchmark.prompt_mode == "mumu"
    with pytest.raises(UserError, match="prompt_mode"):
        load_profile("tiny", {"eval.benchmark.prompt_mode": "inline"})


def test_report_names_the_prompt_mode(tmp_path):
    from mumu.eval.report import write_report

    score = {"benchmark": "toy-single", "dino": 0.5, "clip_i": 0.6, "clip_t": 0.2, "fid": None, "n_images": 0,
             "items": [], "fid_features": "clip"}
    with_mode = write_report([{**score, "prompt_mode": "unimo"}], tmp_path / "a")
    assert "### mumu · toy-single · unimo prompts" in with_mode.markdown
    assert json.loads(with_mode.json_path.read_text())["scores"][0]["prompt_mode"] == "unimo"
    assert "prompts" not in write_report([score], tmp_path / "b").markdown.split("## Samples")[1]


def test_checkpoint_prompt_mode_reads_the_tuned_models_record(tmp_path):
    import json

    from mumu.eval.benchmarks import checkpoint_prompt_mode

    assert checkpoint_prompt_mode(tmp_path) is None  # a model saved without training.json
    for tuned, expected in (("unimo", "unimo"), ("mumu", "mumu"), ("text", "mumu")):
        (tmp_path / "training.json").write_text(json.dumps({"stage": "tune", "prompt_mode": tuned}))
        assert checkpoint_prompt_mode(tmp_path) == expected
