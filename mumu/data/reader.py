"""Read output shards with nothing but tarfile + json + PIL (what data_schemas/README.md documents).

Training code may use webdataset instead; this reader exists so tests and tools do not depend on
any project code to interpret a shard, and so the documented layout is exercised.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image


@dataclass
class ShardSample:
    key: str
    record: dict  # the sample's JSON record (data_schemas.SampleRecord fields)
    members: dict[str, bytes]  # member name without the key ("json", "image.png", "crop_0.png", ...) → bytes

    def open_image(self, ref: str) -> Image.Image:
        """A referenced member as a loaded PIL image (masks are mode "L", everything else "RGB")."""
        im = Image.open(io.BytesIO(self.members[ref]))
        im.load()
        return im

    @property
    def image(self) -> Image.Image:
        return self.open_image(self.record["image"])

    def prompt(self, mode: str = "mumu") -> list[str | Image.Image]:
        """The prompt as ordered segments: text strings and PIL images ("mumu" or "unimo")."""
        return [
            seg["text"] if seg["type"] == "text" else self.open_image(seg["ref"])
            for seg in self.record[f"prompt_{mode}"]
        ]


def read_shard(path: str | Path) -> Iterator[ShardSample]:
    """Samples of one shard in file order. Members are grouped by key (text before the first dot)."""
    current: ShardSample | None = None
    with tarfile.open(path, "r") as tf:
        for m in tf:
            if not m.isfile():
                continue
            key, _, name = m.name.partition(".")
            if current is None or current.key != key:
                if current is not None:
                    yield _finish(current)
                current = ShardSample(key=key, record={}, members={})
            current.members[name] = tf.extractfile(m).read()
    if current is not None:
        yield _finish(current)


def _finish(sample: ShardSample) -> ShardSample:
    sample.record = json.loads(sample.members["json"])
    return sample
