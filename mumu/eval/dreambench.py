"""DreamBench as published (Ruiz et al. 2023, the google/dreambooth repository) as a single-subject benchmark.

Layout, the repository's own (DIR may be the repository or its dataset/ folder)::

    DIR/dataset/<subject>/*.jpg                 30 subjects, 4-6 photos each
    DIR/dataset/prompts_and_classes.txt         the subjects' classes and the two prompt lists

prompts_and_classes.txt holds a "subject_name,class" table ("backpack_dog,backpack") and two Python lists of 25
prompts, "Object Prompts" and "Live Subject Prompts", written as `'a {0} {1} in the jungle'.format(unique_token,
class_token),`. A live subject (the 9 cats and dogs) takes the live list, every other subject the object list.

Protocol (DreamBooth §4.1, followed by KOSMOS-G and UNIMO-G §4.2): one prompt per subject and template (30 x 25 =
750), 4 images per prompt. The subject's image goes where the template has "{0} {1}" (before its class, or in place
of it, per the prompt mode); the CLIP-T text reads the class there ("a backpack in the jungle"). The input image is
the subject's first photo in sorted order; the references are it ("input") or all its photos ("subject").
"""

from __future__ import annotations

import re
from pathlib import Path

from mumu.errors import UserError
from mumu.eval.items import Subject

PROMPTS_FILE = "prompts_and_classes.txt"
SAMPLES_PER_PROMPT = 4
# DreamBooth's 9 live subjects are its cats and dogs (§4.1: "21 objects and 9 live subjects/pets").
LIVE_CLASSES = frozenset({"cat", "dog"})
_PROMPT_LINE = re.compile(r"""^\s*(['"])(?P<text>.*)\1\s*\.format\(\s*unique_token\s*,\s*class_token\s*\)\s*,?\s*$""")


def find_dataset(root: Path) -> Path | None:
    """The folder holding prompts_and_classes.txt (DIR/dataset or DIR itself), or None for another layout."""
    for folder in (root / "dataset", root):
        if (folder / PROMPTS_FILE).is_file():
            return folder
    return None


def parse_prompts_and_classes(text: str, source: str = PROMPTS_FILE) -> tuple[dict[str, str], dict[str, list[str]]]:
    """({subject: class}, {"object": [...], "live": [...]}) with each prompt as a one-placeholder template
    ("a {} in the jungle": the subject's image and class go where the file has "{0} {1}")."""
    classes: dict[str, str] = {}
    prompts: dict[str, list[str]] = {"object": [], "live": []}
    section = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        low = line.lower()
        if not line or low in {"classes", "prompts", "prompt_list = [", "]"}:
            continue
        if low == "subject_name,class":
            section = "classes"
        elif low == "object prompts":
            section = "object"
        elif low == "live subject prompts":
            section = "live"
        elif section == "classes" and "," in line:
            subject, cls = (part.strip() for part in line.split(",", 1))
            classes[subject] = cls
        elif section in prompts and (match := _PROMPT_LINE.match(line)):
            template = match["text"]
            if template.count("{0} {1}") != 1 or template.replace("{0} {1}", "").count("{") > 0:
                raise UserError(f"{source}:{number}: a prompt must hold '{{0}} {{1}}' once, got {template!r}")
            prompts[section].append(template.replace("{0} {1}", "{}"))
        else:
            raise UserError(f"{source}:{number}: not a class line or prompt of DreamBench's format: {line[:60]!r}")
    if not classes or not prompts["object"] or not prompts["live"]:
        raise UserError(f"{source}: expected a 'subject_name,class' table and both prompt lists "
                        f"(found {len(classes)} classes, {len(prompts['object'])} object and "
                        f"{len(prompts['live'])} live prompts)")
    return classes, prompts


def load(dataset: Path, image_suffixes: set[str]):
    """(subjects, {subject key: its templates}) of a DreamBench dataset folder; subjects sorted, each named by
    its class. Listed subjects without a folder are skipped (a partial copy); a folder without a class is an error."""
    path = dataset / PROMPTS_FILE
    try:
        classes, prompts = parse_prompts_and_classes(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    subjects, templates = [], {}
    for folder in sorted(p for p in dataset.iterdir() if p.is_dir()):
        images = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in image_suffixes)
        if not images:
            continue
        if folder.name not in classes:
            raise UserError(f"DreamBench {dataset}: subject folder {folder.name!r} has no class in {PROMPTS_FILE}")
        cls = classes[folder.name]
        subjects.append(Subject(key=folder.name, name=cls, images=images))
        templates[folder.name] = prompts["live" if cls in LIVE_CLASSES else "object"]
    if not subjects:
        raise UserError(f"DreamBench {dataset}: no subject folder with images")
    return subjects, templates
