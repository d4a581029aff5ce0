"""Find the inputs and plan the shards; read an input's bytes.

Inputs (one path or a list of paths):
- a folder of images (searched recursively, hidden entries skipped), with an optional `captions.jsonl`
  at its root: one `{"image": "<path relative to the folder>", "caption": "..."}` per line, and an optional
  `annotations.jsonl`: `{"image": ..., "width": W, "height": H, "objects": [{"name", "box", "mask"}]}` per
  line (mask: mumu.data.scenes RLE). An annotated image takes its boxes and masks from there and skips the
  detector and segmenter (as a dataset with human labels would); the others go through the models;
- webdataset `.tar` files (given directly, or found in a folder): image members by extension, the
  caption from the same sample's `.txt` member or the "caption" field of its `.json` member.
  Members are read as bytes only: nothing is extracted to disk (so a name like "../x.png" or "/etc/x.png"
  is only a label) and nothing is unpickled. An image-named member that is not a regular file (symlink,
  hard link, directory, device) is an input with an `error`: it is quarantined, never followed.

Planning is deterministic: inputs are sorted by their source name and cut into shards of
`images_per_shard`. Bad caption rows (malformed JSON, missing or escaping file, duplicates) become
inputs with an `error`, quarantined by the ingest stage, so they are counted like any other input.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterable
from pathlib import Path

from mumu.config.data import IngestConfig
from mumu.data.work import GivenObject, InputRef, InputShard
from mumu.errors import UserError

IMAGE_EXTS = {"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"}
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
CAPTIONS_FILE = "captions.jsonl"
ANNOTATIONS_FILE = "annotations.jsonl"


def _is_tar(p: Path) -> bool:
    return p.name.lower().endswith(TAR_SUFFIXES)


def _split_member(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is everything up to the first dot of the basename."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    return (name, "") if dot < 0 else (name[:dot], name[dot + 1 :].lower())


def not_regular(member: tarfile.TarInfo) -> str | None:
    """Why a tar member is not a regular file (the quarantine reason), or None for a regular file.

    Links are not followed: a symlink's target may lie outside the archive, and a hard link would make a
    second sample of another member's bytes."""
    if member.isfile():
        return None
    if member.issym():
        return f"not a regular file: symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"not a regular file: hard link to {member.linkname!r}"
    if member.isdir():
        return "not a regular file: directory"
    kind = {tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "fifo"}
    return f"not a regular file: {kind.get(member.type, f'tar member type {member.type!r}')}"


def _tar_refs(tar_path: Path, label: str) -> list[InputRef]:
    try:
        with tarfile.open(tar_path, "r:*") as tf:
            # By name, the last entry wins, as in tarfile's own getmember (used when the member is read).
            members = {m.name: m for m in tf.getmembers()}
    except (tarfile.TarError, OSError, EOFError) as exc:
        return [InputRef(source=label, path=str(tar_path), error=f"unreadable tar ({exc})")]
    by_key: dict[str, dict[str, str]] = {}
    for name in members:
        key, ext = _split_member(name)
        by_key.setdefault(key, {})[ext] = name
    refs = []
    for key in sorted(by_key):
        exts = by_key[key]
        captions = [exts[e] for e in ("txt", "json") if e in exts and members[exts[e]].isfile()]
        for ext in sorted(exts):
            if ext.rsplit(".", 1)[-1] in IMAGE_EXTS:
                name = exts[ext]
                error = not_regular(members[name])
                refs.append(
                    InputRef(
                        source=f"{label}#{name}",
                        path=str(tar_path),
                        member=None if error else name,
                        caption_member=None if error or not captions else captions[0],
                        error=error,
                    )
                )
    return refs


def _caption_rows(root: Path, images: dict[str, Path]) -> tuple[dict[str, str], list[InputRef]]:
    """Parse captions.jsonl → ({relative image path: caption}, [error inputs])."""
    captions: dict[str, str] = {}
    errors: list[InputRef] = []
    for where, rel, row in _jsonl_rows(root, CAPTIONS_FILE, images):
        if rel is None:
            errors.append(InputRef(source=where, error=row))
        elif not isinstance(row.get("caption"), str):
            errors.append(InputRef(source=where, error='expected {"image": str, "caption": str}'))
        else:
            captions[rel] = row["caption"]
    return captions, errors


def _jsonl_rows(root: Path, name: str, images: dict[str, Path]):
    """(where, image rel path, row) of each line of root/name that names an image of the folder; bad rows
    come out as (where, None, error message)."""
    path = root / name
    if not path.exists():
        return
    seen: set[str] = set()
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield where, None, f"malformed JSON ({exc.msg})"
            continue
        if not (isinstance(row, dict) and isinstance(row.get("image"), str)):
            yield where, None, 'expected an object with "image": str'
            continue
        rel = Path(row["image"]).as_posix()
        if not (root / rel).resolve().is_relative_to(root.resolve()):
            yield where, None, f"image {rel!r} is outside the input folder"
        elif rel not in images:
            yield where, None, f"image {rel!r} not found"
        elif rel in seen:
            yield where, None, f"duplicate row for {rel!r}"
        else:
            seen.add(rel)
            yield where, rel, row


def _given_objects(row: dict) -> tuple[GivenObject, ...]:
    """An annotations.jsonl row's objects; ValueError naming what is wrong."""
    try:
        size = (int(row["height"]), int(row["width"]))
        objects = []
        for obj in row["objects"]:
            box = tuple(int(v) for v in obj["box"])
            counts = tuple(int(c) for c in obj["mask"]["counts"])
            if len(box) != 4 or tuple(obj["mask"]["size"]) != size or sum(counts) != size[0] * size[1]:
                raise ValueError("box or mask does not match the image size")
            objects.append(GivenObject(str(obj["name"]), box, counts, size))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"missing or ill-typed field {exc}") from None
    return tuple(objects)


def _annotation_rows(root: Path, images: dict[str, Path]) -> tuple[dict[str, tuple[GivenObject, ...]], list[InputRef]]:
    given, errors = {}, []
    for where, rel, row in _jsonl_rows(root, ANNOTATIONS_FILE, images):
        if rel is None:
            errors.append(InputRef(source=where, error=row))
            continue
        try:
            given[rel] = _given_objects(row)
        except ValueError as exc:
            errors.append(InputRef(source=where, error=f"bad annotation for {rel!r}: {exc}"))
    return given, errors


def _folder_refs(root: Path) -> list[InputRef]:
    images: dict[str, Path] = {}
    tars: list[Path] = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        if _is_tar(p):
            tars.append(p)
        elif p.suffix.lower().lstrip(".") in IMAGE_EXTS:
            images[rel.as_posix()] = p
    captions, refs = _caption_rows(root, images)
    given, bad_annotations = _annotation_rows(root, images)
    refs += bad_annotations
    for rel, p in images.items():
        caption = captions.get(rel)
        refs.append(InputRef(source=rel, path=str(p), caption=(caption or "").strip() or None, given=given.get(rel)))
    for t in tars:
        refs.extend(_tar_refs(t, t.relative_to(root).as_posix()))
    return refs


def find_inputs(input_path: str | Path | Iterable[str | Path]) -> list[InputRef]:
    """All inputs under `input_path`, sorted by source. A folder with nothing to read is a UserError."""
    paths = [Path(input_path)] if isinstance(input_path, (str, Path)) else [Path(p) for p in input_path]
    refs: list[InputRef] = []
    for p in paths:
        if p.is_dir():
            found = _folder_refs(p)
            if not any(r.error is None for r in found):
                raise UserError(f"no images or .tar files found in input folder {p}")
            refs.extend(found)
        elif p.is_file() and _is_tar(p):
            refs.extend(_tar_refs(p, p.name))
        elif p.exists():
            raise UserError(f"input {p} is neither a folder nor a .tar file")
        else:
            raise UserError(f"input {p} does not exist")
    sources = [r.source for r in refs]
    if len(set(sources)) != len(sources):
        dup = sorted({s for s in sources if sources.count(s) > 1})[0]
        raise UserError(f"input {dup!r} is given twice: pass each folder or tar once")
    return sorted(refs, key=lambda r: r.source)


def plan_shards(input_path: str | Path | Iterable[str | Path], cfg: IngestConfig) -> list[InputShard]:
    """Sorted inputs cut into consecutive chunks of `cfg.images_per_shard`: same inputs → same plan."""
    refs = find_inputs(input_path)
    n = cfg.images_per_shard
    return [InputShard(index=i // n, refs=tuple(refs[i : i + n])) for i in range(0, len(refs), n)]


def _caption_from_member(data: bytes, member: str) -> str | None:
    text = data.decode("utf-8", errors="replace")
    if member.lower().endswith(".json"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            return None
        text = obj.get("caption") if isinstance(obj, dict) and isinstance(obj.get("caption"), str) else ""
    return text.strip() or None


def read_refs(
    refs: Iterable[InputRef], max_bytes: int | None = None
) -> Iterable[tuple[InputRef, bytes | None, str | None, str | None]]:
    """Yield (ref, image bytes, caption, error) per ref, opening each tar once for all its members.
    Files over `max_bytes` are refused from their size alone, before anything is read."""
    open_tars: dict[str, tarfile.TarFile] = {}

    def too_big(size: int) -> str | None:
        return f"file too large ({size} bytes > {max_bytes})" if max_bytes is not None and size > max_bytes else None

    try:
        for ref in refs:
            if ref.error is not None:
                yield ref, None, None, ref.error
                continue
            try:
                if ref.member is None:
                    if err := too_big(Path(ref.path).stat().st_size):
                        yield ref, None, None, err
                    else:
                        yield ref, Path(ref.path).read_bytes(), ref.caption, None
                    continue
                tf = open_tars.get(ref.path) or open_tars.setdefault(ref.path, tarfile.open(ref.path, "r:*"))
                info = tf.getmember(ref.member)
                if err := not_regular(info) or too_big(info.size):  # the tar may have changed since planning
                    yield ref, None, None, err
                    continue
                data = tf.extractfile(ref.member).read()
                caption = None
                if ref.caption_member:
                    caption = _caption_from_member(tf.extractfile(ref.caption_member).read(), ref.caption_member)
                yield ref, data, caption, None
            except (OSError, tarfile.TarError, EOFError, KeyError, AttributeError) as exc:
                yield ref, None, None, f"unreadable ({type(exc).__name__}: {exc})"
    finally:
        for tf in open_tars.values():
            tf.close()
