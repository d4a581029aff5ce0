"""MultiBench read in its published layout: category folders, subjects with several images, typed template slots,
seeded fillings, the checkpoint's prompt form, and one-line errors."""

from pathlib import Path

import pytest
from PIL import Image

from mumu.cli import main
from mumu.config.eval import BenchmarkConfig
from mumu.errors import UserError
from mumu.eval.benchmarks import build_benchmarks
from mumu.eval.items import ImageRef
from mumu.eval.multibench import find_dataset, parse_templates, subject_name

FILES = {"living": ["dog.png", "dog2.png", "cat.png", "owl.png"], "wearing": ["hat.png", "red_scarf.jpg"],
         "food": ["cake.jpeg", "cake2.jpeg", "cake10.jpeg", "apple.png"], "toy": ["robot.png"]}
TEMPLATES = """# UNIMO-G's MultiBench templates name typed slots
a {living object} wearing {wearing object} is eating {food object}

a {toy object} next to a {living object}
"""


def make_multibench(root: Path, files: dict[str, list[str]] = FILES, templates: str = TEMPLATES) -> Path:
    for k, (category, names) in enumerate(files.items()):
        (root / category).mkdir(parents=True, exist_ok=True)
        for j, name in enumerate(names):
            Image.new("RGB", (20, 16), (40 * k, 30 * j, 120)).save(root / category / name)
    (root / "prompt_templates.txt").write_text(templates)
    return root


def test_subjects_group_images_by_name_without_trailing_digits(tmp_path):
    root = make_multibench(tmp_path / "MultiBench")
    (bench,) = build_benchmarks(BenchmarkConfig(root=str(root)))  # kinds (single, multi): MultiBench is multi only
    assert bench.name == "multibench-multi" and bench.kind == "multi" and bench.samples_per_prompt is None
    by_key = {s.key: s for s in bench.subjects}
    assert sorted(by_key) == ["food-apple", "food-cake", "living-cat", "living-dog", "living-owl", "toy-robot",
                              "wearing-hat", "wearing-red_scarf"]
    assert [Path(p).name for p in by_key["food-cake"].images] == ["cake.jpeg", "cake2.jpeg", "cake10.jpeg"]
    assert by_key["wearing-red_scarf"].name == "red scarf" and by_key["living-dog"].name == "dog"
    assert (subject_name(Path("cake2.jpeg")), subject_name(Path("7.png"))) == ("cake", "7")
    assert find_dataset(root) == root and find_dataset(tmp_path) is None
    # a copy whose benchmark sits in DIR/dataset is found too
    nested = make_multibench(tmp_path / "repo" / "dataset")
    assert find_dataset(tmp_path / "repo") == nested


def test_items_fill_each_slot_from_its_category_under_the_seed(tmp_path):
    root = make_multibench(tmp_path / "mb")
    cfg = BenchmarkConfig(root=str(root), multi_combinations=3, prompt_mode="unimo")
    (bench,) = build_benchmarks(cfg)
    first = [i for i in bench.items if i.template_index == 0]
    second = [i for i in bench.items if i.template_index == 1]
    # template 0: 3 living x 2 wearing x 2 food = 12 fillings, 3 drawn; template 1: 1 toy x 3 living = 3, all kept
    assert len(first) == 3 and len(second) == 3 and len({i.id for i in bench.items}) == 6
    for item in first:
        assert [s.split("-")[0] for s in item.subjects] == ["living", "wearing", "food"]
    assert sorted(i.subjects[1] for i in second) == ["living-cat", "living-dog", "living-owl"]
    # each slot gets its subject's first image, in the UNIMO-G form (in place of the name); CLIP-T reads names
    item = first[0]
    images = [s.image for s in item.segments if isinstance(s, ImageRef)]
    assert images == item.given_images() == [ref[0] for ref in item.references]
    assert [s for s in item.segments if isinstance(s, str)] == ["a ", " wearing ", " is eating "]
    assert item.text == f"a {item.names[0]} wearing {item.names[1]} is eating {item.names[2]}"
    (every,) = build_benchmarks(cfg.model_copy(update={"multi_combinations": 100}))
    assert len(every.items) == 12 + 3
    cakes = [i for i in every.items if "food-cake" in i.subjects]
    assert len(cakes) == 6 and all(i.given_images()[2].endswith("/food/cake.jpeg") for i in cakes)
    # deterministic under the seed; some other seed draws other fillings for template 0
    assert build_benchmarks(cfg) == [bench]
    fillings = {tuple(i.subjects) for i in first}
    others = [{tuple(i.subjects) for i in build_benchmarks(cfg.model_copy(update={"seed": s}))[0].items
               if i.template_index == 0} for s in range(1, 11)]
    assert any(o != fillings for o in others) and all(len(o) == 3 for o in others)
    # MUMU's form keeps the name after each image; "subject" references are all of a subject's images
    (mumu,) = build_benchmarks(cfg.model_copy(update={"prompt_mode": "mumu", "references": "subject"}))
    item = mumu.items[0]
    assert [s for s in item.segments if isinstance(s, str)] == [
        "a ", f" {item.names[0]} wearing ", f" {item.names[1]} is eating ", f" {item.names[2]}"]
    subjects = {s.key: s for s in mumu.subjects}
    assert item.references == [subjects[k].images for k in item.subjects]


def test_a_template_with_one_category_twice_gets_distinct_subjects(tmp_path):
    root = make_multibench(tmp_path / "mb", templates="a {living object} chasing a {living object}\n")
    (bench,) = build_benchmarks(BenchmarkConfig(root=str(root), multi_combinations=100))
    assert len(bench.items) == 3 * 2  # ordered pairs of distinct living subjects
    assert all(len(set(i.subjects)) == 2 for i in bench.items)
    (limited,) = build_benchmarks(BenchmarkConfig(root=str(root), multi_combinations=100, max_subjects=2))
    assert len(limited.items) == 2  # the first 2 living subjects: (cat, dog) and (dog, cat)


@pytest.mark.parametrize("files, templates, needle", [
    (FILES, "a {vehicle object} on a {food object}\n", "unknown slot {vehicle object}"),
    ({**FILES, "toy": []}, TEMPLATES, "category toy/ has no images"),
    (FILES, "# only a comment\n\n", "no templates"),
    (FILES, "a plain sentence\n", "needs at least one slot"),
    ({**FILES, "toy": ["a.png", "b.png"]}, "a {toy object} and a {toy object} and a {toy object}\n",
     "more distinct subjects"),
])
def test_bad_multibench_folders_are_user_errors(tmp_path, files, templates, needle):
    root = make_multibench(tmp_path / "mb", files, templates)
    with pytest.raises(UserError, match=needle.replace("{", r"\{").replace("}", r"\}")):
        build_benchmarks(BenchmarkConfig(root=str(root)))


def test_unreadable_image_and_single_only_kinds_are_user_errors(tmp_path):
    root = make_multibench(tmp_path / "mb")
    (root / "food" / "pie.png").write_bytes(b"not a png at all")
    with pytest.raises(UserError, match=r"cannot read image .*pie\.png"):
        build_benchmarks(BenchmarkConfig(root=str(root)))
    (root / "food" / "pie.png").unlink()
    with pytest.raises(UserError, match="multi-subject benchmark only"):
        build_benchmarks(BenchmarkConfig(root=str(root), kinds=("single",)))
    with pytest.raises(UserError, match=r"prompt_templates.txt:1: unknown slot"):
        parse_templates("a {living thing}\n")


def test_cli_rejects_a_bad_multibench_with_one_line_before_evaluating(tmp_path, capsys):
    root = make_multibench(tmp_path / "mb", templates="a {living object} riding a {vehicle object}\n")
    model = tmp_path / "model"
    model.mkdir()
    (model / "mumu_config.json").write_text("{}")  # passes the checkpoint check; never loaded
    assert main(["evaluate", "--checkpoint", str(model), "--bench", str(root), "--out", str(tmp_path / "o")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("mumu: error:") and "unknown slot {vehicle object}" in err[0]
    assert not (tmp_path / "o").exists()
