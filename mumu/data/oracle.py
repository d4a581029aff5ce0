"""Ground-truth "models": GroundTruth is a DetectionModel and a SegmentationModel (mumu/data/contracts.py).

They answer from known annotations (composed emoji scenes) instead of a network: used by tests to check
that compose reproduces ground truth exactly, and by ablations as an upper bound ("oracle" boxes and
masks). Images are recognised by their pixels, so they work on images decoded from shard inputs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mumu.data.entities import same_phrase


@dataclass(frozen=True)
class OracleDetection:
    """A contracts.BoxDetection, with the same fields as models.detector.Detection."""

    phrase_index: int
    box: tuple[float, float, float, float]
    score: float


def image_id(image: Image.Image) -> str:
    arr = np.asarray(image.convert("RGB"))
    return hashlib.sha256(arr.tobytes() + repr(arr.shape).encode()).hexdigest()


class GroundTruth:
    """Annotations by image: name → (box, mask). Acts as both detector and segmenter."""

    def __init__(self):
        self._objects: dict[str, list[tuple[str, tuple[int, int, int, int], np.ndarray]]] = {}

    def add(self, image: Image.Image, names, boxes, masks) -> None:
        self._objects[image_id(image)] = [(n, tuple(b), np.asarray(m, bool)) for n, b, m in zip(names, boxes, masks)]

    def add_scene(self, scene) -> None:
        self.add(scene.image, [o.name for o in scene.objects], [o.box for o in scene.objects], scene.masks)

    def _lookup(self, image: Image.Image):
        try:
            return self._objects[image_id(image)]
        except KeyError:
            raise KeyError("image has no ground truth") from None

    def detect(self, images: list[Image.Image], phrases: list[list[str]]) -> list[list[OracleDetection]]:
        out = []
        for image, ps in zip(images, phrases, strict=True):
            objects = self._lookup(image)
            dets = []
            for j, p in enumerate(ps):
                for name, box, _ in objects:
                    if same_phrase(name, p):
                        dets.append(OracleDetection(j, tuple(float(v) for v in box), 1.0))
                        break
            out.append(dets)
        return out

    def segment(self, images: list[Image.Image], boxes) -> list[np.ndarray]:
        out = []
        for image, bs in zip(images, boxes, strict=True):
            by_box = {b: m for _, b, m in self._lookup(image)}
            masks = []
            for b in bs:
                key = tuple(int(round(v)) for v in b)
                if key not in by_box:
                    raise KeyError(f"no ground-truth object with box {key}")
                masks.append(by_box[key])
            h, w = image.size[1], image.size[0]
            out.append(np.stack(masks) if masks else np.zeros((0, h, w), bool))
        return out
