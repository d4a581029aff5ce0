"""Write output shards, their reports and the manifest — deterministically and atomically.

Per input shard N, in this order (each file written to a temporary sibling, then renamed):
  shard-0000N.tar                 webdataset tar (members sorted; fixed mtime/uid/gid/uname/mode)
  shard-0000N.quarantine.jsonl    one QuarantineRecord per line
  shard-0000N.report.json         ShardReport — written last, so "report exists" ⇔ "shard finished"
and, once all shards are done, manifest.json (no timestamps: a re-run is byte-identical) and
quarantine.jsonl (the per-shard quarantine files concatenated in shard order).
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from importlib import metadata
from pathlib import Path

from PIL import Image
from pydantic import ValidationError
from webdataset import TarWriter

from data_schemas import Manifest, QuarantineRecord, ShardReport
from mumu.config.data import WriteConfig
from mumu.data.work import Composed, InputShard, shard_name
from mumu.errors import UserError
from mumu.io import atomic_path, dumps_compact, sha256_file, write_json_atomic, write_jsonl_atomic, write_text_atomic

MANIFEST = "manifest.json"
_SHARD_FILE = re.compile(r"shard-(\d{5,})\.(?:tar|report\.json|quarantine\.jsonl)")
QUARANTINE = "quarantine.jsonl"
VERSIONED_PACKAGES = ("mumu-pipeline", "pillow", "webdataset", "numpy", "torch", "transformers", "pydantic")


def report_path(out_dir: str | Path, index: int) -> Path:
    return Path(out_dir) / f"shard-{index:05d}.report.json"


def quarantine_path(out_dir: str | Path, index: int) -> Path:
    return Path(out_dir) / f"shard-{index:05d}.quarantine.jsonl"


def encode_image(im: Image.Image, fmt: str, jpeg_quality: int = 95, png_compress_level: int = 6) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        im.save(buf, format="JPEG", quality=jpeg_quality, subsampling=0)
    else:  # Pillow writes no time chunk: equal pixels (and level) → equal bytes
        im.save(buf, format="PNG", compress_level=png_compress_level)
    return buf.getvalue()


def sample_members(composed: Composed, cfg: WriteConfig) -> dict[str, bytes]:
    """Member name (without the key) → bytes: "json" record plus every referenced image."""
    members = {"json": dumps_compact(composed.record.model_dump(mode="json")).encode("utf-8")}
    for name, im in composed.images.items():
        fmt = name.rsplit(".", 1)[-1]
        stored = composed.encoded.get(name)
        members[name] = stored if stored is not None else encode_image(im, fmt, cfg.jpeg_quality, cfg.png_compress_level)
    return members


def _remove_stale_tmp(out_dir: Path, index: int) -> None:
    """Temporaries a killed run left behind for this shard (atomic_path names them .<name>.*.tmp)."""
    stem = f"shard-{index:05d}."
    for p in out_dir.glob(f".{stem}*.tmp"):
        p.unlink(missing_ok=True)


def write_shard(
    out_dir: str | Path,
    index: int,
    samples: list[Composed],
    quarantined: list[QuarantineRecord],
    inputs: int,
    counts: dict[str, int],
    cfg: WriteConfig,
    plan_sha256: str = "",
    config_hash: str = "",
) -> ShardReport:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(out_dir, index)
    name = shard_name(index)
    path = out_dir / name
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # mtime an int: a float one makes tarfile add a PAX header (two more 512-byte blocks, built in Python) to
        # every member only to record "mtime=0.0".
        writer = TarWriter(f, user="mumu", group="mumu", mode=0o444, encoder=False, mtime=0)
        for composed in sorted(samples, key=lambda c: c.record.key):
            writer.write({"__key__": composed.record.key, **sample_members(composed, cfg)})
        writer.close()
    write_jsonl_atomic(quarantine_path(out_dir, index), [q.model_dump(mode="json") for q in quarantined])
    report = ShardReport(
        shard=index,
        name=name,
        inputs=inputs,
        written=len(samples),
        quarantined=len(quarantined),
        sha256=sha256_file(path),
        bytes=path.stat().st_size,
        counts=dict(sorted(counts.items())),
        plan_sha256=plan_sha256,
        config_hash=config_hash,
    )
    write_json_atomic(report_path(out_dir, index), report.model_dump(mode="json"))
    return report


def shard_done(out_dir: str | Path, shard_index: int, shard: InputShard | None = None,
               config_hash: str | None = None) -> ShardReport | None:
    """The report of a finished shard, or None: no/unreadable report, tar missing or of the wrong size,
    or (when the planned `shard` / `config_hash` is given) a report written for other inputs or config."""
    rp = report_path(out_dir, shard_index)
    try:
        report = ShardReport.model_validate_json(rp.read_bytes())
    except (OSError, ValidationError, ValueError):
        return None
    if shard is not None and report.plan_sha256 != shard.plan_sha256:
        return None
    if config_hash is not None and report.config_hash != config_hash:
        return None
    tar = Path(out_dir) / report.name
    if not tar.is_file() or tar.stat().st_size != report.bytes or not quarantine_path(out_dir, shard_index).is_file():
        return None
    return report


def package_versions(names=VERSIONED_PACKAGES) -> dict[str, str]:
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "not installed"
    return out


def write_manifest(out_dir: str | Path, reports: list[ShardReport], config_hash: str) -> Manifest:
    """Merge shard reports into manifest.json and the shard quarantine files into quarantine.jsonl."""
    out_dir = Path(out_dir)
    reports = sorted(reports, key=lambda r: r.shard)
    if len({r.shard for r in reports}) != len(reports):
        raise ValueError("write_manifest: the same shard is reported twice")
    counts: Counter = Counter()
    for r in reports:
        counts.update(r.counts)
    manifest = Manifest(
        config_hash=config_hash,
        versions=package_versions(),
        inputs=sum(r.inputs for r in reports),
        written=sum(r.written for r in reports),
        quarantined=sum(r.quarantined for r in reports),
        counts=dict(sorted(counts.items())),
        shards=reports,
    )
    if manifest.inputs != manifest.written + manifest.quarantined:
        raise ValueError(f"manifest: inputs {manifest.inputs} != written {manifest.written} + quarantined {manifest.quarantined}")
    lines = []
    for r in reports:
        text = quarantine_path(out_dir, r.shard).read_text(encoding="utf-8")
        n = sum(1 for ln in text.splitlines() if ln.strip())
        if n != r.quarantined:
            raise ValueError(f"{quarantine_path(out_dir, r.shard).name}: {n} rows, report says {r.quarantined}")
        lines.append(text)
    _remove_stale_shards(out_dir, {r.shard for r in reports})
    write_text_atomic(out_dir / QUARANTINE, "".join(lines))
    write_json_atomic(out_dir / MANIFEST, manifest.model_dump(mode="json"))
    return manifest


def _remove_stale_shards(out_dir: Path, keep: set[int]) -> None:
    """Shard files of an earlier run with more shards: training globs *.tar, so they must not linger."""
    for p in out_dir.iterdir():
        m = _SHARD_FILE.fullmatch(p.name)
        if m and int(m.group(1)) not in keep:
            p.unlink(missing_ok=True)


def read_quarantine(path: str | Path) -> list[QuarantineRecord]:
    text = Path(path).read_text(encoding="utf-8")
    return [QuarantineRecord.model_validate(json.loads(ln)) for ln in text.splitlines() if ln.strip()]


def shard_urls(data_dir: str | Path) -> list[str]:
    """The shards a finished build-data run lists in its manifest (what training and evaluation read)."""
    path = Path(data_dir) / "manifest.json"
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise UserError(f"{path} not found: run `mumu build-data --out {data_dir}` first") from None
    except (ValidationError, ValueError) as exc:
        raise UserError(f"{path} is not a build-data manifest ({str(exc).splitlines()[0]})") from None
    urls = [str(Path(data_dir) / s.name) for s in manifest.shards if s.written > 0]
    if not urls:
        raise UserError(f"{data_dir}: the manifest lists no shard with samples (all inputs were quarantined?)")
    return urls
