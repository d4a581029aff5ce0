"""Multimodal generation prompts: inline `<image:path>` syntax or a JSON list of segments.

Inline:  a <image:cat.png> cat on a <image:sofa.jpg> sofa
         paths are relative to `base_dir` (default: the working directory) or absolute; `\\<` is a literal
         "<" (so `\\<image:x>` stays text), `\\\\` a literal backslash, `\\>` a ">" inside a path; a "<" not
         followed by "image:" is ordinary text.
JSON:    [{"type": "text", "text": "a "}, {"type": "image", "path": "cat.png"}, {"type": "text", "text": " cat"}]
         the shape of the data schema's prompt segments (an optional "entity" is accepted and ignored).

Both give list[str | PIL.Image.Image] with RGB images (EXIF orientation applied, transparency over white,
as the data stage's masked segments use white outside the subject). Every problem is one UserError line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, ValidationError

from mumu.errors import UserError

Prompt = list[str | Image.Image]
_OPEN = "<image:"


def load_image(path: str | Path, base_dir: str | Path | None = None) -> Image.Image:
    """An RGB prompt image: EXIF-transposed, alpha composited over white."""
    full = Path(path).expanduser()
    if not full.is_absolute():
        full = Path(base_dir or ".") / full
    if not full.is_file():
        raise UserError(f"prompt image not found: {full}")
    try:
        with Image.open(full) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exn:
        reason = str(exn).splitlines()[0] if str(exn) else type(exn).__name__
        raise UserError(f"prompt image {full} cannot be read: {reason}") from None
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def parse_inline(text: str, base_dir: str | Path | None = None) -> Prompt:
    """Parse the inline form; adjacent text is merged and empty text segments are dropped."""
    segments: Prompt = []
    buf: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in "<>\\[":
            buf.append(text[i + 1])
            i += 2
        elif text.startswith(_OPEN, i):
            start = i
            i += len(_OPEN)
            path: list[str] = []
            while i < n and text[i] != ">":
                if text[i] == "\\" and i + 1 < n and text[i + 1] in "<>\\":
                    i += 1
                path.append(text[i])
                i += 1
            if i >= n:
                raise UserError(f"unclosed '{_OPEN}' at character {start} of the prompt (missing '>')")
            i += 1  # the ">"
            name = "".join(path).strip()
            if not name:
                raise UserError(f"empty image path in '{text[start:i]}' at character {start} of the prompt")
            if buf:
                segments.append("".join(buf))
                buf = []
            segments.append(load_image(name, base_dir))
        else:
            buf.append(c)
            i += 1
    if buf:
        segments.append("".join(buf))
    return segments


class _Text(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class _Image(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["image"]
    path: str
    entity: int | None = None


def parse_json(data: str | list, base_dir: str | Path | None = None) -> Prompt:
    """Parse the JSON form (a JSON string or an already-loaded list)."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exn:
            raise UserError(f"invalid JSON prompt: {exn}") from None
    if not isinstance(data, list):
        raise UserError(f"a JSON prompt must be a list of segments, got {type(data).__name__}")
    segments: Prompt = []
    for i, item in enumerate(data):
        kind = item.get("type") if isinstance(item, dict) else None
        model = {"text": _Text, "image": _Image}.get(kind) if isinstance(kind, str) else None
        if model is None:
            what = f"type {kind!r}" if isinstance(item, dict) else f"a {type(item).__name__}"
            raise UserError(
                f"prompt segment {i}: unknown segment {what} (expected an object with type 'text' or 'image')"
            )
        try:
            seg = model.model_validate(item)
        except ValidationError as exn:
            err = exn.errors()[0]
            field = ".".join(map(str, err["loc"])) or "segment"
            raise UserError(f"prompt segment {i} ({kind}): {field}: {err['msg']}") from None
        if isinstance(seg, _Text):
            if seg.text:
                segments.append(seg.text)
        elif not seg.path.strip():
            raise UserError(f"prompt segment {i}: empty image path")
        else:
            segments.append(load_image(seg.path.strip(), base_dir))
    return segments


def parse_prompt(
    prompt: str, base_dir: str | Path | None = None, form: Literal["auto", "inline", "json"] = "auto"
) -> Prompt:
    """Parse either form; "auto" takes a prompt starting with "[" as JSON (write "\\[" for a literal one)."""
    if form == "json" or (form == "auto" and prompt.lstrip().startswith("[")):
        return parse_json(prompt, base_dir)
    return parse_inline(prompt, base_dir)


def parse_prompt_file(path: str | Path) -> Prompt:
    """A prompt stored in a file: *.json in the JSON form, anything else inline; paths relative to the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exn:
        raise UserError(f"cannot read prompt file {path}: {exn}") from None
    form = "json" if path.suffix.lower() == ".json" else "inline"
    return parse_prompt(text.strip("\n") if form == "inline" else text, path.parent, form)
