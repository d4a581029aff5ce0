"""The benchmark vocabulary every benchmark reader shares: subjects, items (multimodal prompts with the subjects'
reference images), benchmarks, and the template filling that turns a template and its subjects into an item.

mumu/eval/benchmarks.py builds the toy and folder benchmarks from these, mumu/eval/dreambench.py and
mumu/eval/multibench.py the published ones; each of those reads this module and none reads another.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict

from mumu.errors import UserError


class ImageRef(BaseModel):
    """An image segment of a multimodal prompt (a path, so items stay JSON for task boundaries)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    image: str


class BenchItem(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str  # unique in its benchmark; safe as a directory name
    kind: Literal["single", "multi"]
    segments: list[str | ImageRef]  # the multimodal prompt, text and images in order
    text: str  # the prompt with each image replaced by its subject's name (CLIP-T)
    subjects: list[str]  # subject keys, in placeholder order
    names: list[str]
    references: list[list[str]]  # per subject: reference image paths for DINO / CLIP-I
    template_index: int
    # Per subject, the image its prompt gives it (the copy-paste score compares outputs with it); empty for items
    # built by hand, whose prompt images are then taken in order (given_images).
    inputs: list[str] = []

    def given_images(self) -> list[str]:
        """Per subject (in `subjects` order), the image path the prompt gave it."""
        if self.inputs:
            return list(self.inputs)
        return [s.image for s in self.segments if isinstance(s, ImageRef)][:len(self.subjects)]

    def prompt_string(self) -> str:
        """The prompt in its written form: "a <image:path> in the jungle"."""
        return "".join(s if isinstance(s, str) else f"<image:{s.image}>" for s in self.segments)

    def load_prompt(self) -> list[str | Image.Image]:
        """Segments with the images opened (RGB; transparent pixels on white)."""
        return [s if isinstance(s, str) else load_rgb(s.image) for s in self.segments]


class Subject(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    key: str
    name: str
    images: list[str]


PromptMode = Literal["mumu", "unimo"]


class Benchmark(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str  # e.g. "toy-single"; the runner writes under <eval dir>/<name>
    kind: Literal["single", "multi"]
    prompt_mode: PromptMode  # how the subject images sit in the prompts (mumu/eval/benchmarks.py)
    subjects: list[Subject]
    items: list[BenchItem]
    samples_per_prompt: int | None = None  # fixed by the benchmark's protocol (DreamBench: 4); None = eval's
    # One image per subject, drawn from emoji (the toy): the copy-paste score and the real-image ceiling use
    # held-out renderings of each subject as its other real images (mumu/eval/held_out.py).
    held_out_renderings: bool = False
    # Where it comes from: the published benchmarks' figures are printed beside a run on them (mumu/eval/presets.py).
    source: Literal["toy", "folder", "dreambench", "multibench"] = "folder"

    def reference_images(self) -> list[str]:
        """Every subject image of the benchmark, sorted (FID's default real set)."""
        return sorted({p for s in self.subjects for p in s.images})


def load_rgb(path: str | Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                bg = Image.new("RGB", im.size, (255, 255, 255))
                bg.paste(im, mask=im.getchannel("A"))
                return bg
            return im.convert("RGB")
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None


def chunk(items: list, size: int) -> list[list]:
    """Consecutive chunks of `size` items (the last may be shorter), order kept."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return [items[i:i + size] for i in range(0, len(items), size)]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def split_template(template: str) -> list[str | int]:
    """"a {0} and a {1}" -> ["a ", 0, " and a ", 1]; a bare "{}" is field 0."""
    parts: list[str | int] = []
    auto = 0
    for literal, field, spec, conv in string.Formatter().parse(template):
        if literal:
            parts.append(literal)
        if field is None:
            continue
        if spec or conv or not (field == "" or field.isdigit()):
            raise UserError(f"prompt template {template!r}: placeholders must be {{}} or {{0}}, {{1}}, ...")
        parts.append(auto if field == "" else int(field))
        auto += 1
    return parts


def n_placeholders(template: str) -> int:
    fields = {p for p in split_template(template) if isinstance(p, int)}
    if fields != set(range(len(fields))):
        raise UserError(f"prompt template {template!r}: placeholders must be numbered 0..k-1")
    return len(fields)


def make_item(kind, item_id, template, template_index, subjects: list[Subject], inputs: list[str],
               references: list[list[str]], prompt_mode: PromptMode) -> BenchItem:
    segments: list[str | ImageRef] = []
    text = []

    def add_text(s: str) -> None:  # adjacent text is one segment, as in the data stage's prompts
        if segments and isinstance(segments[-1], str):
            segments[-1] += s
        else:
            segments.append(s)

    for part in split_template(template):
        if isinstance(part, str):
            add_text(part)
            text.append(part)
        else:
            segments.append(ImageRef(image=inputs[part]))
            name = subjects[part].name
            if prompt_mode == "mumu":  # MUMU tunes on "<crop> word": the name follows its image
                add_text(" " + name)
            text.append(name)
    return BenchItem(id=item_id, kind=kind, segments=segments, text="".join(text),
                     subjects=[s.key for s in subjects], names=[s.name for s in subjects],
                     references=references, template_index=template_index, inputs=list(inputs))
