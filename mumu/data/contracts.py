"""What the data stages ask of their models: the caption, detection and segmentation contracts.

mumu.data.stages calls models through these Protocols only, so any object with the methods below works:
the networks in models/ (captioner.Captioner, detector.Detector, segmenter.Segmenter), the ground-truth
oracle (mumu.data.oracle.GroundTruth) and test fakes. Each call covers a whole shard's items (the model
batches them by its own config) and returns exactly one result per input image, in order; the stages
check lengths and shapes and quarantine the items a model fails on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in the image's pixel coordinates (x1, y1 exclusive)


@runtime_checkable
class BoxDetection(Protocol):
    """One box found for one phrase (models.detector.Detection, mumu.data.oracle.OracleDetection)."""

    phrase_index: int  # index into the phrases given for that image
    box: Box
    score: float  # confidence in [0, 1]; the stages keep the best box per phrase


@runtime_checkable
class CaptionModel(Protocol):
    def caption(self, images: list[Image.Image]) -> list[str]:
        """One caption per RGB image; "" means no caption (the item is quarantined)."""
        ...


@runtime_checkable
class DetectionModel(Protocol):
    def detect(self, images: list[Image.Image], phrases: list[list[str]]) -> Sequence[Sequence[BoxDetection]]:
        """Per image, the boxes found for its phrases (possibly none for a phrase)."""
        ...


@runtime_checkable
class SegmentationModel(Protocol):
    def segment(self, images: list[Image.Image], boxes: list[list[Box]]) -> list[np.ndarray]:
        """Per image a bool array [n_boxes, H, W] at the image's size, one mask per box in order."""
        ...
