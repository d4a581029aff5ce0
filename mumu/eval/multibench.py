"""MultiBench as published (UNIMO-G, Li et al. 2024, §4.2) as a multi-subject benchmark.

Layout (DIR may be the benchmark folder or hold it as DIR/dataset)::

    DIR/living/*.jpg|jpeg|png|webp      one folder per object category (the published four: living, wearing,
    DIR/wearing/...                     toy, food); a subject may have several images: cake.jpeg, cake2.jpeg
    DIR/toy/...                         are two images of the subject "cake" (trailing digits of the file
    DIR/food/...                        name stripped; "_" in a name reads as a space)
    DIR/prompt_templates.txt            one template a line; blank lines and "#" comments skipped

A template names typed slots, one per subject: `a {living object} wearing {wearing object} is eating {food
object}` (`{living}` works too). For each template, `multi_combinations` fillings are drawn under `seed` (all of
them when fewer exist): each slot gets a subject of its category, no subject twice in one prompt. A slot takes
its subject's first image (natural order: cake.jpeg, cake2.jpeg, ..., cake10.jpeg) the way the checkpoint was
tuned (`prompt_mode`, as every benchmark: before the subject's name, or in place of it); the CLIP-T text reads
the name there. References: that image ("input") or all of the subject's images ("subject").
`max_subjects` keeps the first N subjects of each category, `max_templates` the first N templates.

An unknown slot, a slot whose category has no images, an unreadable image or a file without templates is one
line (mumu.errors.UserError), before anything is generated.
"""

from __future__ import annotations

import itertools
import random
import re
from pathlib import Path

from PIL import Image

from mumu.errors import UserError
from mumu.eval.items import Subject, make_item, slug

TEMPLATES_FILE = "prompt_templates.txt"
CATEGORIES = ("living", "wearing", "toy", "food")  # UNIMO-G's four MultiBench categories
_SLOT = re.compile(r"\{([^{}]*)\}")
_TRAILING_DIGITS = re.compile(r"\d+$")


def find_dataset(root: Path) -> Path | None:
    """The folder holding prompt_templates.txt (DIR/dataset or DIR itself), or None for another layout."""
    for folder in (root / "dataset", root):
        if (folder / TEMPLATES_FILE).is_file():
            return folder
    return None


def subject_name(file: Path) -> str:
    """"cake2.jpeg" -> "cake": a file's subject, its stem without trailing digits (a name that is only digits
    stays as it is)."""
    return _TRAILING_DIGITS.sub("", file.stem) or file.stem


def _natural_key(file: Path) -> tuple[str, int]:
    digits = re.search(r"\d+$", file.stem)
    return subject_name(file), int(digits.group()) if digits and digits.group() != file.stem else 0


def parse_templates(text: str, source: str = TEMPLATES_FILE) -> list[tuple[str, list[str]]]:
    """[(template with numbered placeholders "a {0} wearing {1}", [slot category per placeholder])]."""
    templates = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        categories: list[str] = []

        def number_slot(match: re.Match) -> str:
            slot = match.group(1).strip()
            category = re.sub(r"\s+object$", "", slot)
            if category not in CATEGORIES:
                raise UserError(f"{source}:{number}: unknown slot {{{slot}}}: slots name a category, "
                                f"{', '.join('{' + c + ' object}' for c in CATEGORIES)}")
            categories.append(category)
            return "{" + str(len(categories) - 1) + "}"

        template = _SLOT.sub(number_slot, line)
        if not categories:
            raise UserError(f"{source}:{number}: a template needs at least one slot such as {{food object}}")
        if "{" in _SLOT.sub("", template) or "}" in _SLOT.sub("", template):
            raise UserError(f"{source}:{number}: unbalanced brace in {line!r}")
        templates.append((template, categories))
    if not templates:
        raise UserError(f"{source}: no templates (one a line, e.g. 'a {{living object}} eating {{food object}}')")
    return templates


def _check_readable(path: Path, dataset: Path) -> None:
    try:
        with Image.open(path) as im:
            im.verify()
    except (OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"MultiBench {dataset}: cannot read image {path}: {exc}") from None


def load(dataset: Path, image_suffixes: set[str], max_subjects: int | None = None,
         max_templates: int | None = None):
    """(subjects sorted by category and name, {subject key: category}, [(template, slot categories)]) of a
    MultiBench folder; only the categories its templates use are read (and every image of them checked)."""
    path = dataset / TEMPLATES_FILE
    try:
        templates = parse_templates(path.read_text(encoding="utf-8"), str(path))[:max_templates]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    subjects, category_of = [], {}
    for category in sorted({c for _, cats in templates for c in cats}):
        folder = dataset / category
        files = sorted((p for p in folder.iterdir() if p.suffix.lower() in image_suffixes and p.is_file()),
                       key=_natural_key) if folder.is_dir() else []
        if not files:
            raise UserError(f"MultiBench {dataset}: category {category}/ has no images, but a template has a "
                            f"{{{category} object}} slot")
        grouped: dict[str, list[str]] = {}
        for file in files:
            _check_readable(file, dataset)
            grouped.setdefault(subject_name(file), []).append(str(file))
        for name in sorted(grouped)[:max_subjects]:
            key = f"{category}-{name}"
            subjects.append(Subject(key=key, name=name.replace("_", " "), images=grouped[name]))
            category_of[key] = category
    return subjects, category_of, templates


def draw_fillings(subjects_by_category: dict[str, list[int]], categories: list[str], count: int,
                  seed: str) -> list[tuple[int, ...]]:
    """Up to `count` fillings of a template's slots (subject indices, one per slot, all distinct), drawn under
    `seed` and sorted; all of them when fewer exist."""
    pools = [subjects_by_category[c] for c in categories]
    fillings = [combo for combo in itertools.product(*pools) if len(set(combo)) == len(combo)]
    if len(fillings) > count:
        fillings = sorted(random.Random(seed).sample(fillings, count))
    return fillings


def items(subjects, category_of: dict[str, str], templates: list[tuple[str, list[str]]], combinations: int,
          references: str, seed: int, prompt_mode):
    """The benchmark's items: per template (file order), its drawn fillings."""
    by_category: dict[str, list[int]] = {}
    for index, subject in enumerate(subjects):
        by_category.setdefault(category_of[subject.key], []).append(index)
    out = []
    for ti, (template, categories) in enumerate(templates):
        if any(len(by_category.get(c, [])) < categories.count(c) for c in set(categories)):
            raise UserError(f"MultiBench template {template!r} needs more distinct subjects in one category than "
                            "the benchmark has")
        for combo in draw_fillings(by_category, categories, combinations, f"{seed}:{ti}"):
            chosen = [subjects[i] for i in combo]
            inputs = [s.images[0] for s in chosen]
            refs = [[s.images[0]] if references == "input" else list(s.images) for s in chosen]
            key = "+".join(slug(s.key) for s in chosen)
            out.append(make_item("multi", f"multi{len(chosen)}-{key}-t{ti:02d}", template, ti, chosen, inputs,
                                  refs, prompt_mode))
    return out
