import pytest

from mumu.config import config_hash, load_profile
from mumu.errors import UserError


def test_bundled_profiles_load_and_differ_only_in_values():
    tiny, sdxl = load_profile("tiny"), load_profile("mumu-sdxl")
    assert tiny.data.detect.model.config is not None and tiny.data.detect.model.pretrained is None
    assert sdxl.data.detect.model.pretrained == "IDEA-Research/grounding-dino-base"
    assert sdxl.model.decoder.unet.subfolder == "unet"
    assert type(tiny) is type(sdxl)
    assert config_hash(tiny) != config_hash(sdxl)
    assert config_hash(tiny) == config_hash(load_profile("tiny"))


def test_overrides_apply_and_typos_fail_with_one_line():
    cfg = load_profile("tiny", {"data.detect.box_threshold": 0.5})
    assert cfg.data.detect.box_threshold == 0.5
    with pytest.raises(UserError, match=r"data\.detect\.box_treshold: Extra inputs are not permitted"):
        load_profile("tiny", {"data.detect.box_treshold": 0.5})
    with pytest.raises(UserError, match="unknown profile 'nope'"):
        load_profile("nope")


def test_bad_yaml_and_bad_types_are_user_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_profile(str(bad))
    with pytest.raises(UserError, match="images_per_shard"):
        load_profile("tiny", {"data.ingest.images_per_shard": 0})
    with pytest.raises(UserError, match="exactly one of"):
        load_profile("tiny", {"data.detect.model.pretrained": "some/id"})
