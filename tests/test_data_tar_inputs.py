"""Hostile webdataset tar inputs: members that are not regular files, path-traversal names, pickles.

Every image-named member is an input: it is written or quarantined with a reason, so
inputs == written + quarantined still counts all of them; nothing is extracted, followed or unpickled.
"""

import io
import os
import pickle
import tarfile
from pathlib import Path

from PIL import Image

from mumu.config import load_profile
from mumu.data import stages
from mumu.data.oracle import GroundTruth
from mumu.data.reader import read_shard
from mumu.data.scenes import render_scene
from mumu.data.shards import read_quarantine
from mumu.data.work import sample_key

EMOJI = Path(__file__).resolve().parent.parent / "mumu" / "samples" / "emoji"
CFG = load_profile("tiny", {"data.ingest.images_per_shard": 16, "data.ingest.max_side": 256}).data


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _add(tf: tarfile.TarFile, name: str, data: bytes = b"", **kind) -> None:
    info = tarfile.TarInfo(name)
    for k, v in kind.items():
        setattr(info, k, v)
    if info.isfile():
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    else:
        tf.addfile(info)


def _scene_tar(path: Path, names: list[str], extra=lambda tf: None) -> GroundTruth:
    """A tar whose members `names` are regular PNG scenes with .txt captions; `extra` adds more members."""
    gt = GroundTruth()
    with tarfile.open(path, "w") as tf:
        for i, name in enumerate(names):
            scene = render_scene(EMOJI, 700 + i, n_objects=1)
            gt.add_scene(scene)
            _add(tf, name, _png(scene.image))
            _add(tf, name.rsplit(".", 1)[0] + ".txt", scene.caption.encode())
        extra(tf)
    return gt


def _run(tar: Path, out: Path, gt: GroundTruth):
    (shard,) = stages.plan_shards(tar, CFG.ingest)
    return shard, stages.run_shard(shard, out, CFG, None, gt, gt)


def _quarantine(out: Path) -> dict[str, tuple[str, str]]:
    return {q.source: (q.stage, q.reason) for q in read_quarantine(out / "shard-00000.quarantine.jsonl")}


def test_members_that_are_not_regular_files_are_quarantined_with_their_reason(tmp_path):
    def links(tf):
        _add(tf, "link.png", type=tarfile.SYMTYPE, linkname="a.png")
        _add(tf, "escape.jpg", type=tarfile.SYMTYPE, linkname="../../../etc/passwd")
        _add(tf, "hard.png", type=tarfile.LNKTYPE, linkname="a.png")
        _add(tf, "x.png", type=tarfile.DIRTYPE, mode=0o755)
        _add(tf, "pipe.webp", type=tarfile.FIFOTYPE)
        _add(tf, "notes.txt", type=tarfile.SYMTYPE, linkname="a.txt")  # not image-named: not an input
        _add(tf, "images", type=tarfile.DIRTYPE, mode=0o755)  # a plain folder entry: not an input

    gt = _scene_tar(tmp_path / "in.tar", ["a.png"], links)
    shard, report = _run(tmp_path / "in.tar", tmp_path / "out", gt)
    assert sorted(r.source for r in shard.refs) == [
        "in.tar#a.png", "in.tar#escape.jpg", "in.tar#hard.png", "in.tar#link.png", "in.tar#pipe.webp", "in.tar#x.png"]
    assert (report.inputs, report.written, report.quarantined) == (6, 1, 5)
    assert report.counts["quarantined_ingest"] == 5
    assert _quarantine(tmp_path / "out") == {
        "in.tar#link.png": ("ingest", "not a regular file: symbolic link to 'a.png'"),
        "in.tar#escape.jpg": ("ingest", "not a regular file: symbolic link to '../../../etc/passwd'"),
        "in.tar#hard.png": ("ingest", "not a regular file: hard link to 'a.png'"),
        "in.tar#x.png": ("ingest", "not a regular file: directory"),
        "in.tar#pipe.webp": ("ingest", "not a regular file: fifo"),
    }
    (sample,) = list(read_shard(tmp_path / "out" / "shard-00000.tar"))
    assert sample.record["source"] == "in.tar#a.png"


def test_a_symlink_that_shadows_a_regular_member_of_the_same_name_is_not_followed(tmp_path):
    # tarfile reads the *last* entry of a name: planning must judge that entry, not an earlier regular one.
    gt = _scene_tar(tmp_path / "in.tar", ["a.png", "b.png"],
                    lambda tf: _add(tf, "b.png", type=tarfile.SYMTYPE, linkname="a.png"))
    _, report = _run(tmp_path / "in.tar", tmp_path / "out", gt)
    assert (report.inputs, report.written, report.quarantined) == (2, 1, 1)
    assert _quarantine(tmp_path / "out") == {"in.tar#b.png": ("ingest", "not a regular file: symbolic link to 'a.png'")}


def test_path_traversal_member_names_are_labels_and_nothing_lands_outside_out(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    names = ["../../escape.png", "/abs/evil.png", "sub/../../up.png"]
    gt = _scene_tar(work / "in.tar", names)
    before = {p for p in tmp_path.rglob("*")}
    cwd = os.getcwd()
    os.chdir(work)  # a member extracted relative to the working directory would land beside it
    try:
        shard, report = _run(work / "in.tar", work / "out", gt)
    finally:
        os.chdir(cwd)
    assert (report.inputs, report.written, report.quarantined) == (3, 3, 0)
    created = {p for p in tmp_path.rglob("*")} - before
    assert created and all(p.is_relative_to(work / "out") for p in created), sorted(created)
    assert not Path("/abs/evil.png").exists()
    samples = list(read_shard(work / "out" / "shard-00000.tar"))
    assert sorted(s.record["source"] for s in samples) == sorted(f"in.tar#{n}" for n in names)
    for s in samples:  # the sample key is a hash of the source: no dots or slashes reach the output tar
        assert s.record["key"] == sample_key(s.record["source"]) and s.record["key"].isalnum()
    with tarfile.open(work / "out" / "shard-00000.tar") as tf:
        assert all("/" not in m.name and not m.name.startswith(".") for m in tf.getmembers())


class _Payload:
    """Unpickling this creates a file: proof that a member was unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_members_of_input_tars_are_never_unpickled(tmp_path):
    marker = tmp_path / "was-unpickled"
    payload = pickle.dumps(_Payload(str(marker)))
    assert not marker.exists()

    def pickles(tf):
        _add(tf, "a.pyd", payload)  # same key as the image: a sidecar nobody may decode
        _add(tf, "p.pickle", payload)  # not image-named: not an input
        _add(tf, "q.png", payload)  # image-named pickle bytes: an input that is not an image

    gt = _scene_tar(tmp_path / "in.tar", ["a.png"], pickles)
    shard, report = _run(tmp_path / "in.tar", tmp_path / "out", gt)
    assert sorted(r.source for r in shard.refs) == ["in.tar#a.png", "in.tar#q.png"]
    assert (report.inputs, report.written, report.quarantined) == (2, 1, 1)
    assert _quarantine(tmp_path / "out") == {"in.tar#q.png": ("ingest", "not an image (unrecognised format)")}
    assert not marker.exists()
    pickle.loads(payload)  # the payload is live: loading it does create the marker
    assert marker.exists()
