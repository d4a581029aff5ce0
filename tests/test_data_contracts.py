"""The data stages' model contracts (mumu/data/contracts.py): the networks in models/, the ground-truth
oracle and the test fakes all satisfy them, with the same method signatures."""

import inspect

import numpy as np
import pytest
from PIL import Image

from models.captioner import Captioner
from models.detector import Detection, Detector
from models.segmenter import Segmenter
from mumu.data import contracts, stages
from mumu.data.oracle import GroundTruth, OracleDetection
from mumu.data.work import Entity, Item, ShardWork


def _params(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


@pytest.mark.parametrize("cls, protocol, method", [
    (Captioner, contracts.CaptionModel, "caption"),
    (Detector, contracts.DetectionModel, "detect"),
    (Segmenter, contracts.SegmentationModel, "segment"),
    (GroundTruth, contracts.DetectionModel, "detect"),
    (GroundTruth, contracts.SegmentationModel, "segment"),
])
def test_models_and_oracle_satisfy_the_contracts(cls, protocol, method):
    assert issubclass(cls, protocol)
    assert _params(getattr(cls, method)) == _params(getattr(protocol, method))


def test_detections_carry_the_box_detection_fields():
    for det in (Detection(0, (1.0, 2.0, 3.0, 4.0), 0.5), OracleDetection(0, (1.0, 2.0, 3.0, 4.0), 1.0)):
        assert isinstance(det, contracts.BoxDetection)
    assert not isinstance(object(), contracts.BoxDetection)


def test_an_object_without_the_method_is_not_a_model_and_a_minimal_one_drives_the_stages():
    class Boxes:  # only what DetectionModel and SegmentationModel ask for
        def detect(self, images, phrases):
            return [[Detection(j, (0.0, 0.0, 20.0, 10.0), 0.9) for j in range(len(ps))] for ps in phrases]

        def segment(self, images, boxes):
            return [np.ones((len(bs), im.height, im.width), bool) for im, bs in zip(images, boxes)]

    assert not isinstance(Boxes(), contracts.CaptionModel)
    assert isinstance(Boxes(), contracts.DetectionModel) and isinstance(Boxes(), contracts.SegmentationModel)
    item = Item(key="k", source="s", image=Image.new("RGB", (40, 30)), caption="a cat",
                entities=(Entity("cat", (2, 5)),))
    work = stages.segment(stages.detect(ShardWork(shard=0, inputs=1, items=(item,)), Boxes()), Boxes())
    (out,) = work.items
    assert out.entities[0].box == (0, 0, 20, 10) and out.masks.shape == (1, 30, 40)
