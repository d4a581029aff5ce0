"""The whole data stage on a folder with deliberately bad inputs, with ground-truth fake models.

Counts reconcile per shard and overall; re-runs are byte-identical; a killed run resumes; the shards
are readable by plain webdataset and by tarfile+json+PIL, every prompt reference exists, crops equal
their source regions.
"""

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from mumu.config import load_profile
from mumu.data import stages
from mumu.data.decode import decode_input
from mumu.data.oracle import GroundTruth, image_id
from mumu.data.reader import read_shard
from mumu.data.scenes import render_scene
from mumu.data.shards import read_quarantine
from mumu.data.work import sample_key
from mumu.errors import UserError

EMOJI = Path(__file__).resolve().parent.parent / "mumu" / "samples" / "emoji"
CFG = load_profile("tiny", {"data.ingest.images_per_shard": 6, "data.ingest.max_side": 256}).data


def png(im, **kw):
    buf = io.BytesIO()
    im.save(buf, format="PNG", **kw)
    return buf.getvalue()


def jpeg(im, **kw):
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=100, **kw)
    return buf.getvalue()


def bomb_png(w, h):
    data = bytearray(png(Image.new("RGB", (4, 4))))
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


class SceneCaptioner:
    """Answers the scene's caption for known images; "" (an empty caption) for the rest."""

    def __init__(self, captions: dict[str, str]):
        self.captions, self.calls = captions, 0

    def caption(self, images):
        self.calls += 1
        return [self.captions.get(image_id(im), "") for im in images]


class FailOn(GroundTruth):
    """Ground truth that fails like a broken model on chosen images (or raises `exc` to simulate a kill)."""

    def __init__(self, gt: GroundTruth, bad_ids=(), exc: type[BaseException] = RuntimeError, after_calls=None):
        self._objects, self.bad_ids, self.exc, self.after, self.calls = gt._objects, set(bad_ids), exc, after_calls, 0

    def detect(self, images, phrases):
        self.calls += 1
        if self.after is not None and self.calls > self.after:
            raise self.exc("killed")
        if any(image_id(im) in self.bad_ids for im in images):
            raise self.exc("CUDA error: device-side assert (simulated)")
        return super().detect(images, phrases)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    gt, vlm = GroundTruth(), {}
    rows, expect_bad = [], {}
    for i in range(9):
        scene = render_scene(EMOJI, 100 + i)
        gt.add_scene(scene)
        name = f"scenes/scene_{i}.png"
        (root / "scenes").mkdir(exist_ok=True)
        scene.image.save(root / name)
        if i < 7:
            rows.append({"image": name, "caption": scene.caption})
        else:
            vlm[image_id(scene.image)] = scene.caption  # captioned by the (fake) VLM
    odd = {  # unusual but valid: written, with a caption that has no entity
        "odd/cmyk.jpg": jpeg(Image.new("CMYK", (48, 40), (0, 255, 255, 0))),
        "odd/gray16.png": png(Image.fromarray(np.full((40, 48), 40000, np.uint16))),
        "odd/palette.png": png(Image.new("P", (48, 40), 3)),
        "odd/rgba.png": png(Image.new("RGBA", (48, 40), (0, 0, 255, 100))),
    }
    exif = Image.Exif()
    exif[0x0112] = 6
    odd["odd/rotated.jpg"] = jpeg(Image.new("RGB", (64, 40), (9, 9, 9)), exif=exif.tobytes())
    for name, data in odd.items():
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_bytes(data)
        rows.append({"image": name, "caption": "an abstract pattern"})
    good = png(Image.new("RGB", (64, 64), (1, 2, 3)))
    bad = {
        "bad/truncated.png": (good[: len(good) // 2], "truncated file"),
        "bad/empty.jpg": (b"", "empty file (0 bytes)"),
        "bad/text.jpg": (b"not really a jpeg\n", "not an image"),
        "bad/bomb.png": (bomb_png(30000, 30000), "decompression bomb"),
        "bad/tiny.png": (png(Image.new("RGB", (8, 8))), "too small"),
    }
    for name, (data, reason) in bad.items():
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_bytes(data)
        rows.append({"image": name, "caption": "a dog"})
        expect_bad[name] = ("ingest", reason)
    blank = Image.new("RGB", (50, 50), (200, 100, 0))  # no caption given; the VLM answers ""
    blank.save(root / "nocap.png")
    expect_bad["nocap.png"] = ("caption", "empty caption from captioner")
    lines = [json.dumps(r) for r in rows]
    lines.insert(3, "{not json")
    lines.append(json.dumps({"image": "missing.png", "caption": "a cat"}))
    lines.append(json.dumps({"image": "../outside.png", "caption": "a cat"}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    expect_bad["captions.jsonl:4"] = ("ingest", "malformed JSON")
    expect_bad[f"captions.jsonl:{len(lines) - 1}"] = ("ingest", "image 'missing.png' not found")
    expect_bad[f"captions.jsonl:{len(lines)}"] = ("ingest", "image '../outside.png' is outside the input folder")
    n_inputs = 9 + len(odd) + len(bad) + 1 + 3
    return root, gt, vlm, expect_bad, n_inputs


def run(inputs, out, detector=None, captioner=None):
    root, gt, vlm, _, _ = inputs
    captioner = captioner or SceneCaptioner(vlm)
    det = detector or gt
    return stages.run_local(root, out, CFG, captioner, det, det, "cfg-hash")


def tree_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_counts_reconcile_and_bad_inputs_are_quarantined_with_reasons(inputs, tmp_path):
    root, gt, vlm, expect_bad, n_inputs = inputs
    captioner = SceneCaptioner(vlm)
    manifest, ran = run(inputs, tmp_path, captioner=captioner)
    assert ran == list(range(len(manifest.shards))) and len(ran) == -(-n_inputs // 6)
    assert manifest.inputs == n_inputs == manifest.written + manifest.quarantined
    assert manifest.written == 9 + 5 and manifest.quarantined == len(expect_bad)
    for r in manifest.shards:
        assert r.inputs == r.written + r.quarantined
        assert len(read_quarantine(tmp_path / f"shard-{r.shard:05d}.quarantine.jsonl")) == r.quarantined
        assert len(list(read_shard(tmp_path / r.name))) == r.written
    quarantine = read_quarantine(tmp_path / "quarantine.jsonl")
    got = {q.source: (q.stage, q.reason) for q in quarantine}
    assert set(got) == set(expect_bad)
    for source, (stage, reason) in expect_bad.items():
        assert got[source][0] == stage and got[source][1].startswith(reason), (source, got[source])
    c = manifest.counts
    assert c["inputs"] == n_inputs and c["decoded"] == 9 + 5 + 1 and c["captioned_by_vlm"] == 2
    assert c["quarantined_ingest"] == len(expect_bad) - 1 and c["quarantined_caption"] == 1
    assert c["entities"] == c["boxes"] == c["masks"] == sum(len(objs) for objs in gt._objects.values())
    assert c["crops_kept"] + c.get("crops_small", 0) + c.get("crops_large", 0) + c.get("crops_limit", 0) == c["boxes"]
    # one batched captioner call per shard that has uncaptioned items, none for the others
    uncaptioned = {"scenes/scene_7.png", "scenes/scene_8.png", "nocap.png"}
    plan = stages.plan_shards(root, CFG.ingest)
    assert captioner.calls == len({s.index for s in plan for r in s.refs if r.source in uncaptioned})


def test_samples_reference_existing_members_and_crops_match_source(inputs, tmp_path):
    root, gt, *_ = inputs
    manifest, _ = run(inputs, tmp_path)
    sources = set()
    for r in manifest.shards:
        for s in read_shard(tmp_path / r.name):
            rec = s.record
            sources.add(rec["source"])
            assert s.key == rec["key"] == sample_key(rec["source"])
            image = np.asarray(s.image)
            assert image.shape == (rec["height"], rec["width"], 3)
            refs = [seg["ref"] for mode in ("mumu", "unimo") for seg in rec[f"prompt_{mode}"] if seg["type"] == "image"]
            for ent in rec["entities"]:
                refs += [ent["crop"], ent["segment"], ent["mask"]]
                x0, y0, x1, y1 = ent["box"]
                assert np.array_equal(np.asarray(s.open_image(ent["crop"])), image[y0:y1, x0:x1])
                assert rec["caption"][ent["char_span"][0] : ent["char_span"][1]] == ent["phrase"]
            assert all(ref in s.members for ref in refs)
            if rec["source"].startswith("odd/"):
                assert rec["entities"] == [] and rec["caption"] == "an abstract pattern"
            if rec["source"] == "odd/rotated.jpg":  # 64x40 with EXIF "rotate 90": stored upright
                assert (rec["width"], rec["height"]) == (40, 64)
    assert {f"scenes/scene_{i}.png" for i in range(9)} | {"odd/rotated.jpg", "odd/cmyk.jpg"} <= sources


def test_target_images_hold_the_decoded_pixels_and_rgb_pngs_are_stored_as_they_came(inputs, tmp_path):
    root, *_ = inputs
    manifest, _ = run(inputs, tmp_path)
    stored_as_is = 0
    for r in manifest.shards:
        for s in read_shard(tmp_path / r.name):
            data = (root / s.record["source"]).read_bytes()
            decoded = decode_input(data, CFG.ingest)
            assert np.array_equal(np.asarray(s.image), np.asarray(decoded.image)), s.record["source"]
            target = s.members[s.record["image"]]
            if decoded.png is not None:  # the rendered scenes: 8-bit RGB PNGs within max_side
                assert target == decoded.png and target.startswith(data[:33])
                stored_as_is += 1
    assert stored_as_is >= 9


def test_rerun_is_idempotent_and_byte_identical(inputs, tmp_path):
    first, _ = run(inputs, tmp_path / "a")
    before = tree_bytes(tmp_path / "a")
    again, ran = run(inputs, tmp_path / "a")
    assert ran == [] and again == first and tree_bytes(tmp_path / "a") == before
    fresh, ran = run(inputs, tmp_path / "b")
    assert ran and tree_bytes(tmp_path / "b") == before
    manifest = json.loads(before["manifest.json"])
    assert manifest["config_hash"] == "cfg-hash" and "pillow" in manifest["versions"]
    for r in manifest["shards"]:
        assert r["sha256"] == __import__("hashlib").sha256(before[r["name"]]).hexdigest()


class Killed(BaseException):
    """Not an Exception: stands for SIGKILL/KeyboardInterrupt, which must not be quarantined."""


def test_killed_run_resumes_skipping_finished_shards(inputs, tmp_path):
    root, gt, *_ = inputs
    clean, _ = run(inputs, tmp_path / "clean")
    out = tmp_path / "out"
    last = len(clean.shards) - 1
    # shards 0-1 hold no entities (no detector call); the kill comes at the second detector call
    with pytest.raises(Killed):
        run(inputs, out, detector=FailOn(gt, exc=Killed, after_calls=1))
    finished = sorted(p.name for p in out.glob("*.report.json"))
    assert finished == [f"shard-{i:05d}.report.json" for i in range(last)]
    assert not (out / "manifest.json").exists() and not (out / f"shard-{last:05d}.tar").exists()
    # a write killed before its rename leaves a temporary; a torn report must not count as finished
    (out / f".shard-{last:05d}.tar.abc123.tmp").write_bytes(b"partial")
    (out / f"shard-{last:05d}.report.json").write_text('{"shard": 3, "na')
    manifest, ran = run(inputs, out)
    assert ran == [last]
    assert not list(out.glob(".*.tmp"))
    assert tree_bytes(out) == tree_bytes(tmp_path / "clean") and manifest == clean


def test_model_error_on_one_item_quarantines_only_that_item(inputs, tmp_path):
    root, gt, *_ = inputs
    scene_path = root / "scenes" / "scene_0.png"
    bad_id = image_id(Image.open(scene_path).convert("RGB"))
    manifest, _ = run(inputs, tmp_path, detector=FailOn(gt, bad_ids={bad_id}))
    q = {r.source: r for r in read_quarantine(tmp_path / "quarantine.jsonl")}
    assert q["scenes/scene_0.png"].stage == "detect" and "CUDA error" in q["scenes/scene_0.png"].reason
    assert manifest.inputs == manifest.written + manifest.quarantined and manifest.counts["quarantined_detect"] == 1


def test_a_model_failing_on_every_item_raises_instead_of_quarantining(inputs):
    root, gt, *_ = inputs
    shard = stages.plan_shards(root, CFG.ingest)[-2]
    work = stages.find_entities(stages.caption(stages.ingest(shard, CFG.ingest), None), CFG.entities)
    assert sum(1 for it in work.items if it.entities) >= 2
    every = {image_id(it.image) for it in work.items}
    with pytest.raises(RuntimeError, match="CUDA error"):
        stages.detect(work, FailOn(gt, bad_ids=every))


def test_stages_do_not_mutate_their_input(inputs):
    root, gt, vlm, *_ = inputs
    shard = stages.plan_shards(root, CFG.ingest)[0]
    work = stages.ingest(shard, CFG.ingest)
    snapshot = (work.items, work.quarantined, dict(work.counts))
    captioned = stages.caption(work, SceneCaptioner(vlm))
    ents = stages.find_entities(captioned, CFG.entities)
    stages.compose(stages.segment(stages.detect(ents, gt), gt), CFG.compose)
    assert (work.items, work.quarantined, dict(work.counts)) == snapshot
    assert all(it.entities == () for it in captioned.items)


def test_plain_webdataset_reads_every_referenced_member(inputs, tmp_path):
    manifest, _ = run(inputs, tmp_path)
    urls = [str(tmp_path / r.name) for r in manifest.shards]
    n = 0
    for sample in wds.WebDataset(urls, shardshuffle=False):
        rec = json.loads(sample["json"])
        assert sample["__key__"] == rec["key"]
        assert rec["image"] in sample
        for seg in rec["prompt_mumu"] + rec["prompt_unimo"]:
            if seg["type"] == "image":
                assert Image.open(io.BytesIO(sample[seg["ref"]])).mode == "RGB"
        for ent in rec["entities"]:
            assert Image.open(io.BytesIO(sample[ent["mask"]])).mode == "L"
        n += 1
    assert n == manifest.written


def test_webdataset_tar_inputs_with_txt_and_json_captions(tmp_path):
    scenes = [render_scene(EMOJI, 300 + i, n_objects=1) for i in range(3)]
    gt = GroundTruth()
    with tarfile.open(tmp_path / "in.tar", "w") as tf:
        def add(name, data):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))

        for i, sc in enumerate(scenes):
            gt.add_scene(sc)
            add(f"{i:03d}.jpg" if i == 0 else f"{i:03d}.png", jpeg(sc.image) if i == 0 else png(sc.image))
            if i == 1:
                add(f"{i:03d}.json", json.dumps({"caption": sc.caption}).encode())
            elif i == 2:
                add(f"{i:03d}.txt", sc.caption.encode())
        add("003.pyd", b"\x80\x04not unpickled")  # ignored: not an image member
    shards = stages.plan_shards(tmp_path / "in.tar", CFG.ingest)
    assert [r.source for r in shards[0].refs] == ["in.tar#000.jpg", "in.tar#001.png", "in.tar#002.png"]
    work = stages.ingest(shards[0], CFG.ingest)
    assert [it.caption for it in work.items] == [None, scenes[1].caption, scenes[2].caption]
    small = stages.ingest(shards[0], CFG.ingest.model_copy(update={"max_file_bytes": 1000}))
    assert {q.reason.split(" (")[0] for q in small.quarantined} == {"file too large"} and not small.items
    work = stages.caption(work, SceneCaptioner({}))  # the JPEG-recompressed scene gets "" → quarantined
    assert [q.source for q in work.quarantined] == ["in.tar#000.jpg"]
    work = stages.segment(stages.detect(stages.find_entities(work, CFG.entities), gt), gt)
    report = stages.write(stages.compose(work, CFG.compose), tmp_path / "out", CFG)
    assert (report.inputs, report.written, report.quarantined) == (3, 2, 1)


def test_unreadable_tar_in_a_folder_is_one_quarantined_input(tmp_path):
    (tmp_path / "in").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "in" / "ok.png")
    (tmp_path / "in" / "broken.tar").write_bytes(b"\x00garbage" * 100)
    shards = stages.plan_shards(tmp_path / "in", CFG.ingest)
    work = stages.ingest(shards[0], CFG.ingest)
    assert [it.source for it in work.items] == ["ok.png"]
    assert [(q.source, q.reason.split(" (")[0]) for q in work.quarantined] == [("broken.tar", "unreadable tar")]


def test_folders_without_images_are_user_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images or .tar files found in input folder"):
        stages.plan_shards(tmp_path / "empty", CFG.ingest)
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "captions.jsonl").write_text('{"image": "a.png", "caption": "x"}\n')
    (tmp_path / "only" / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match="no images"):
        stages.plan_shards(tmp_path / "only", CFG.ingest)
    with pytest.raises(UserError, match="does not exist"):
        stages.plan_shards(tmp_path / "nope", CFG.ingest)


def test_plan_is_deterministic_and_a_changed_plan_is_rebuilt(inputs, tmp_path):
    root, *_ = inputs
    a, b = stages.plan_shards(root, CFG.ingest), stages.plan_shards(root, CFG.ingest)
    assert a == b and [s.index for s in a] == list(range(len(a)))
    assert [r.source for s in a for r in s.refs] == sorted(r.source for s in a for r in s.refs)
    manifest, _ = run(inputs, tmp_path)
    assert stages.shard_done(tmp_path, 0, a[0]) == manifest.shards[0]
    other = stages.InputShard(0, a[0].refs[1:])
    assert stages.shard_done(tmp_path, 0, other) is None


def test_fewer_inputs_rebuild_changed_shards_and_remove_stale_ones(inputs, tmp_path):
    root, gt, vlm, *_ = inputs
    full, _ = run(inputs, tmp_path)
    assert len(full.shards) == 4
    subset = root / "scenes"  # a smaller input: one shard; its plan differs from the old shard 0
    manifest, ran = stages.run_local(subset, tmp_path, CFG, SceneCaptioner(vlm), gt, gt, "h")
    assert ran == [0, 1] and manifest.inputs == 9
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == sorted(
        f"shard-{i:05d}.{ext}" for i in (0, 1) for ext in ("tar", "report.json", "quarantine.jsonl")
    )
