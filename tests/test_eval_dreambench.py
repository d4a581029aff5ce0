"""DreamBench read from the google/dreambooth repository's own layout: subjects, classes, object vs live prompts,
counts, the protocol's 4 images per prompt."""

from pathlib import Path

import pytest
from PIL import Image

from mumu.config import load_profile
from mumu.config.eval import BenchmarkConfig
from mumu.errors import UserError
from mumu.eval.benchmarks import build_benchmarks, eval_config_for
from mumu.eval.dreambench import parse_prompts_and_classes
from mumu.eval.items import ImageRef
from tests.eval_fakes import CountingGenerator, PixelEncoders

CLASSES = {
    "backpack": "backpack", "backpack_dog": "backpack", "bear_plushie": "stuffed animal", "berry_bowl": "bowl",
    "can": "can", "candle": "candle", "cat": "cat", "cat2": "cat", "clock": "clock", "colorful_sneaker": "sneaker",
    "dog": "dog", "dog2": "dog", "dog3": "dog", "dog5": "dog", "dog6": "dog", "dog7": "dog", "dog8": "dog",
    "duck_toy": "toy", "fancy_boot": "boot", "grey_sloth_plushie": "stuffed animal", "monster_toy": "toy",
    "pink_sunglasses": "glasses", "poop_emoji": "toy", "rc_car": "toy", "red_cartoon": "cartoon",
    "robot_toy": "toy", "shiny_sneaker": "sneaker", "teapot": "teapot", "vase": "vase", "wolf_plushie": "stuffed animal",
}
SHARED = ["in the jungle", "in the snow", "on the beach", "on a cobblestone street", "on top of pink fabric",
          "on top of a wooden floor", "with a city in the background", "with a mountain in the background",
          "with a blue house in the background", "on top of a purple rug in a forest"]
OBJECT = SHARED + ["with a wheat field in the background", "with a tree and autumn leaves in the background",
                   "with the Eiffel Tower in the background", "floating on top of water",
                   "floating in an ocean of milk", "on top of green grass with sunflowers around it",
                   "on top of a mirror", "on top of the sidewalk in a crowded street", "on top of a dirt road",
                   "on top of a white rug"]
LIVE = SHARED + ["wearing a red hat", "wearing a santa hat", "wearing a rainbow scarf",
                 "wearing a black top hat and a monocle", "in a chef outfit", "in a firefighter outfit",
                 "in a police outfit", "wearing pink glasses", "wearing a yellow shirt", "in a purple wizard outfit"]
ADJECTIVES = ["red", "purple", "shiny", "wet", "cube shaped"]


def prompt_list(tails: list[str]) -> str:
    """A prompt list as prompts_and_classes.txt writes it."""
    lines = [f"'a {{0}} {{1}} {tail}'.format(unique_token, class_token)," for tail in tails]
    lines += [f"'a {adj} {{0}} {{1}}'.format(unique_token, class_token)," for adj in ADJECTIVES]
    lines[-1] = lines[-1].rstrip(",")
    return "prompt_list = [\n" + "\n".join(lines) + "\n]\n"


def prompts_and_classes() -> str:
    table = "\n".join(f"{s},{c}" for s, c in CLASSES.items())
    return (f"Classes\n\nsubject_name,class\n{table}\n\nPrompts\n\nObject Prompts\n\n{prompt_list(OBJECT)}\n"
            f"Live Subject Prompts\n\n{prompt_list(LIVE)}")


def make_repository(root: Path, photos: dict[str, int]) -> Path:
    """google/dreambooth's layout: dataset/<subject>/NN.jpg and dataset/prompts_and_classes.txt."""
    dataset = root / "dataset"
    for subject, n in photos.items():
        (dataset / subject).mkdir(parents=True)
        for k in range(n):
            Image.new("RGB", (24, 16), (30 * k, 90, 160)).save(dataset / subject / f"{k:02d}.jpg", quality=90)
    (dataset / "prompts_and_classes.txt").write_text(prompts_and_classes())
    (dataset / "references_and_licenses.txt").write_text("photo credits\n")
    return root


def test_the_published_file_parses_into_classes_and_two_lists_of_25():
    classes, prompts = parse_prompts_and_classes(prompts_and_classes())
    assert classes == CLASSES and len(classes) == 30
    assert len(prompts["object"]) == len(prompts["live"]) == 25
    assert prompts["object"][0] == "a {} in the jungle" and prompts["object"][24] == "a cube shaped {}"
    assert prompts["live"][13] == "a {} wearing a black top hat and a monocle"
    assert sum(c in {"cat", "dog"} for c in classes.values()) == 9  # DreamBooth's 9 live subjects


def test_dreambench_layout_gives_subjects_classes_prompts_and_counts(tmp_path):
    root = make_repository(tmp_path / "dreambooth", {"backpack_dog": 3, "cat2": 2, "teapot": 1})
    single, multi = build_benchmarks(BenchmarkConfig(root=str(root), prompt_mode="mumu"))
    assert [(s.key, s.name, len(s.images)) for s in single.subjects] == [
        ("backpack_dog", "backpack", 3), ("cat2", "cat", 2), ("teapot", "teapot", 1)]
    # One prompt per subject and template (3 x 25), 4 images each: the protocol, whatever the profile says.
    assert single.name == "dreambooth-single" and len(single.items) == 3 * 25 and single.samples_per_prompt == 4
    texts = {s.key: [i.text for i in single.items if i.subjects == [s.key]] for s in single.subjects}
    assert texts["backpack_dog"][10] == "a backpack with a wheat field in the background"  # object prompts
    assert texts["cat2"][10] == "a cat wearing a red hat"  # live prompts for the cat
    assert texts["teapot"][24] == "a cube shaped teapot"
    first = single.items[0]
    photo = str(root / "dataset" / "backpack_dog" / "00.jpg")
    assert first.id == "single-backpack-dog-00-t00"
    assert first.segments == ["a ", ImageRef(image=photo), " backpack in the jungle"]  # MUMU: image, then class
    assert first.references == [[photo]]  # "input": the photo in the prompt
    assert len({i.id for i in single.items}) == len(single.items)
    # Multi-subject: DreamBench's subjects in the bundled multi templates; no protocol of its own.
    assert multi.samples_per_prompt is None and {s for i in multi.items for s in i.subjects} <= set(texts)

    (unimo,) = build_benchmarks(BenchmarkConfig(root=str(root / "dataset"), kinds=("single",), prompt_mode="unimo",
                                                references="subject", max_subjects=1, max_templates=2))
    assert len(unimo.items) == 2 and unimo.name == "dataset-single"  # the dataset/ folder itself works too
    assert unimo.items[0].segments == ["a ", ImageRef(image=photo), " in the jungle"]
    assert unimo.items[0].references == [[str(root / "dataset" / "backpack_dog" / f"{k:02d}.jpg") for k in range(3)]]

    ev = load_profile("tiny").eval
    assert ev.samples_per_prompt == 2 and eval_config_for(single, ev).samples_per_prompt == 4
    assert eval_config_for(multi, ev) is ev


def test_bad_dreambench_files_are_one_line_errors(tmp_path):
    root = make_repository(tmp_path / "a", {"teapot": 1})
    (root / "dataset" / "unknown_subject").mkdir()
    Image.new("RGB", (8, 8)).save(root / "dataset" / "unknown_subject" / "00.jpg")
    with pytest.raises(UserError, match="'unknown_subject' has no class"):
        build_benchmarks(BenchmarkConfig(root=str(root)))
    bad = make_repository(tmp_path / "b", {"teapot": 1})
    text = prompts_and_classes().replace("'a {0} {1} in the snow'", "'a {1} in the snow'")
    (bad / "dataset" / "prompts_and_classes.txt").write_text(text)
    with pytest.raises(UserError, match=r"prompts_and_classes.txt:\d+: a prompt must hold"):
        build_benchmarks(BenchmarkConfig(root=str(bad)))
    (bad / "dataset" / "prompts_and_classes.txt").write_text("Classes\n\nsubject_name,class\nteapot,teapot\n")
    with pytest.raises(UserError, match="both prompt lists"):
        build_benchmarks(BenchmarkConfig(root=str(bad)))


def test_in_process_evaluation_follows_the_dreambench_protocol(tmp_path):
    from mumu.eval.runner import evaluate

    root = make_repository(tmp_path / "dreambooth", {"backpack_dog": 1, "cat2": 1})
    cfg = load_profile("tiny", {"eval.benchmark.root": str(root), "eval.benchmark.kinds": ["single"],
                                "eval.benchmark.max_templates": 2, "eval.chunk_size": 4}).eval
    assert cfg.samples_per_prompt == 2
    gen = CountingGenerator()
    report = evaluate(gen, tmp_path / "eval", PixelEncoders(), cfg)
    assert [n for _, n, _ in gen.calls] == [4] * 4  # 2 subjects x 2 templates, 4 images each, not the profile's 2
    assert [(r["Benchmark"], r["Images"]) for r in report.rows] == [("dreambooth-single", 16)]
    assert len(list((tmp_path / "eval" / "dreambooth-single" / "images").glob("*/*.png"))) == 16


def test_dreambench_report_has_copy_paste_ceiling_and_the_protocol(tmp_path):
    """DreamBench's subjects have several photos: the first is given, the others are the copy-paste score's and the
    ceiling's "other real images"; the protocol names the 4 images per prompt and the photo each prompt used."""
    import json

    import numpy as np

    from mumu.eval.items import load_rgb
    from mumu.eval.runner import evaluate

    root = make_repository(tmp_path / "dreambooth", {"backpack_dog": 3, "cat2": 2})
    cfg = load_profile("tiny", {"eval.benchmark.root": str(root), "eval.benchmark.kinds": ["single"],
                                "eval.benchmark.max_templates": 1}).eval
    report = evaluate(CountingGenerator(noise=0), tmp_path / "eval", PixelEncoders(), cfg)  # pastes its input
    (s,) = json.loads(report.json_path.read_text())["scores"]
    photos = {k: [str(root / "dataset" / k / f"{j:02d}.jpg") for j in range(n)] for k, n in (("backpack_dog", 3),
                                                                                            ("cat2", 2))}
    assert s["protocol"]["samples_per_prompt"] == 4
    assert s["protocol"]["input_images"] == {k: [v[0]] for k, v in photos.items()}
    assert [it["others"] for it in s["items"]] == [[photos["backpack_dog"][1:]], [photos["cat2"][1:]]]
    ceiling, copy = s["reference_rows"]["ceiling"], s["reference_rows"]["copy"]
    assert s["copy_paste"] == pytest.approx(copy["copy_paste"], abs=1e-9)  # pasting scores the copy row
    # the ceiling's DINO: each other photo against the given one, per subject, then over items
    enc = PixelEncoders()
    feats = {p: enc.dino.features([load_rgb(p)]).numpy()[0] for v in photos.values() for p in v}
    cos = lambda a, b: float(feats[a] @ feats[b] / np.linalg.norm(feats[a]) / np.linalg.norm(feats[b]))  # noqa: E731
    expected = np.mean([np.mean([cos(o, v[0]) for o in v[1:]]) for v in photos.values()])
    assert ceiling["dino"] == pytest.approx(expected, abs=1e-6)
    # the cat has one other photo: no leave-one-out copy-paste for it; the backpack's two others give one
    assert ceiling["n_copy_paste"] == 1
