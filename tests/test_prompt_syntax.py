"""Generation prompt syntax: inline <image:...> and JSON segments, and their one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mumu.errors import UserError
from mumu.prompt_syntax import load_image, parse_inline, parse_json, parse_prompt, parse_prompt_file


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    cat = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    Image.fromarray(cat, "RGB").save(tmp_path / "cat.png")
    sofa = np.full((8, 8, 3), 200, np.uint8)
    Image.fromarray(sofa, "RGB").save(tmp_path / "sofa.jpg", quality=95)
    return tmp_path, cat, sofa


def _is(segment, pixels, tol=0):
    assert isinstance(segment, Image.Image) and segment.mode == "RGB"
    got = np.asarray(segment).astype(int)
    assert got.shape == pixels.shape and np.abs(got - pixels).max() <= tol


def test_inline_prompt(images):
    base, cat, sofa = images
    out = parse_inline("a <image:cat.png> cat on a <image: sofa.jpg > sofa", base)
    assert [type(s) for s in out] == [str, Image.Image, str, Image.Image, str]
    assert out[0] == "a " and out[2] == " cat on a " and out[4] == " sofa"
    _is(out[1], cat)
    _is(out[3], sofa, tol=3)  # jpeg


def test_inline_absolute_path_escapes_and_plain_angle_brackets(images, tmp_path_factory):
    base, cat, _ = images
    other = tmp_path_factory.mktemp("elsewhere")
    out = parse_inline(f"<image:{base / 'cat.png'}>\\<image:x> 1 < 2 > 0 \\\\ end", other)
    _is(out[0], cat)
    assert out[1:] == ["<image:x> 1 < 2 > 0 \\ end"]
    assert parse_prompt("\\[not json] <b>", base) == ["[not json] <b>"]
    assert parse_inline("", base) == []


def test_json_prompt_same_result_as_inline(images):
    base, cat, sofa = images
    segments = [{"type": "text", "text": "a "}, {"type": "image", "path": "cat.png", "entity": 0},
                {"type": "text", "text": " and "}, {"type": "image", "path": "sofa.jpg"}]
    a = parse_prompt(json.dumps(segments), base)
    b = parse_prompt("a <image:cat.png> and <image:sofa.jpg>", base)
    assert len(a) == len(b) == 4 and a[0] == b[0] == "a " and a[2] == b[2] == " and "
    for x, y in zip(a[1::2], b[1::2]):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    _is(a[1], cat)
    (base / "prompt.json").write_text(json.dumps(segments))
    c = parse_prompt_file(base / "prompt.json")  # image paths relative to the file
    np.testing.assert_array_equal(np.asarray(c[1]), cat)
    (base / "prompt.txt").write_text("a <image:cat.png>\n")
    d = parse_prompt_file(base / "prompt.txt")
    assert d[0] == "a " and len(d) == 2


def test_exif_orientation_and_alpha(tmp_path):
    pixels = np.zeros((4, 8, 3), np.uint8)
    pixels[:, :4] = (255, 0, 0)  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(pixels, "RGB").save(tmp_path / "rot.png", exif=exif.tobytes())
    rotated = np.asarray(load_image("rot.png", tmp_path))
    assert rotated.shape == (8, 4, 3)
    assert (rotated[:4, :, 0] == 255).all() and (rotated[4:, :, 0] == 0).all()  # red now on top
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (0, 0, 255, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    flat = np.asarray(load_image(tmp_path / "alpha.png"))
    assert flat[0, 0].tolist() == [0, 0, 255] and flat[1, 1].tolist() == [255, 255, 255]


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("a <image:missing.png> cat", "prompt image not found: .*missing.png"),
        ("a <image:broken.png> cat", "prompt image .*broken.png cannot be read"),
        ("a <image:cat.png cat", "unclosed '<image:' at character 2"),
        ("a <image:   > cat", "empty image path in '<image:   >' at character 2"),
        ('[{"type": "text", "text": "a"', "invalid JSON prompt: "),
        ('[{"type": "video", "path": "cat.png"}]', "prompt segment 0: unknown segment type 'video'"),
        ('[{"type": "text", "text": "a"}, 3]', "prompt segment 1: unknown segment a int"),
        ('[{"type": "image"}]', "prompt segment 0 \\(image\\): path: Field required"),
        ('[{"type": "image", "path": " "}]', "prompt segment 0: empty image path"),
        ('[{"type": "text", "text": "a", "colour": 1}]', "prompt segment 0 \\(text\\): colour: Extra inputs"),
        ('{"type": "text", "text": "a"}', None),  # not "[": inline text, not an error
    ],
)
def test_errors_are_one_clear_line(images, prompt, message):
    base, _, _ = images
    (base / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    if message is None:
        assert parse_prompt(prompt, base) == [prompt]
        return
    with pytest.raises(UserError, match=message) as err:
        parse_prompt(prompt, base)
    assert "\n" not in str(err.value)


def test_json_must_be_a_list():
    with pytest.raises(UserError, match="must be a list of segments, got dict"):
        parse_json('{"type": "text", "text": "a"}')
    with pytest.raises(UserError, match="must be a list of segments, got dict"):
        parse_prompt('{"type": "text"}', form="json")
