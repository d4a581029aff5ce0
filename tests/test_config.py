import pytest

from mumu.config import config_hash, load_profile, resolve_profile
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


def test_a_resolved_config_passes_down_as_it_is_and_takes_overrides_like_a_name():
    cfg = load_profile("tiny", {"train.tune.max_steps": 7})
    assert resolve_profile(cfg) is cfg  # the object an entry point resolved, not a reload
    assert resolve_profile("tiny", {"train.tune.max_steps": 7}) == cfg
    laid_on = resolve_profile(cfg, {"eval.benchmark.root": "B"})
    assert laid_on == load_profile("tiny", {"train.tune.max_steps": 7, "eval.benchmark.root": "B"})
    assert laid_on.train.tune.max_steps == 7 and cfg.eval.benchmark.root != "B"  # the given object is unchanged
    with pytest.raises(UserError, match=r"^profile tiny: train.tune.batch_size: Input should be greater"):
        resolve_profile(cfg, {"train.tune.batch_size": 0})


def test_bad_yaml_and_bad_types_are_user_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_profile(str(bad))
    with pytest.raises(UserError, match="images_per_shard"):
        load_profile("tiny", {"data.ingest.images_per_shard": 0})
    with pytest.raises(UserError, match="exactly one of"):
        load_profile("tiny", {"data.detect.model.pretrained": "some/id"})


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_extends_deep_merges_over_the_base_and_overrides_win(tmp_path):
    base = load_profile("tiny")
    child = load_profile(_write(tmp_path / "child.yaml", (
        "extends: tiny\n"
        "data:\n  detect: {box_threshold: 0.5}\n"          # one key of a nested section
        "model:\n  connector: {width: 48}\n"
        "eval:\n  benchmark: {max_subjects: null}\n")))
    assert child.name == "child"  # named after itself, not after its base
    assert child.data.detect.box_threshold == 0.5
    assert child.data.detect.text_threshold == base.data.detect.text_threshold  # siblings kept
    assert child.data.detect.model == base.data.detect.model
    assert child.model.connector.width == 48 and child.model.connector.heads == base.model.connector.heads
    assert child.eval.benchmark.max_subjects is None and child.eval.benchmark.max_templates == base.eval.benchmark.max_templates
    # A chain: grandchild extends child (a path relative to its own folder); --set overrides win over both.
    (tmp_path / "sub").mkdir()
    grand = load_profile(_write(tmp_path / "sub" / "grand.yaml", "extends: ../child.yaml\nmodel:\n  connector: {layers: 3}\n"),
                         {"model.connector.width": 40})
    assert (grand.model.connector.layers, grand.model.connector.width, grand.data.detect.box_threshold) == (3, 40, 0.5)
    # Lists are replaced, not appended to.
    lists = load_profile(_write(tmp_path / "lists.yaml", "extends: tiny\neval:\n  benchmark: {kinds: [multi]}\n"))
    assert lists.eval.benchmark.kinds == ("multi",)


def test_extends_cycles_unknown_bases_and_bad_values_are_one_line_errors(tmp_path):
    _write(tmp_path / "a.yaml", "extends: b.yaml\n")
    _write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(UserError, match=r"`extends` makes a cycle \(a -> b -> a\)"):
        load_profile(str(tmp_path / "a.yaml"))
    with pytest.raises(UserError, match="cycle"):
        load_profile(_write(tmp_path / "self.yaml", "extends: self.yaml\n"))
    with pytest.raises(UserError, match=r"extends unknown profile 'tinny'.*bundled: .*tiny"):
        load_profile(_write(tmp_path / "typo.yaml", "extends: tinny\n"))
    with pytest.raises(UserError, match="`extends` must name one profile"):
        load_profile(_write(tmp_path / "two.yaml", "extends: [tiny, mumu-sdxl]\n"))
    with pytest.raises(UserError, match=r"model\.connector\.widht"):
        load_profile(_write(tmp_path / "bad.yaml", "extends: tiny\nmodel:\n  connector: {widht: 3}\n"))
    with pytest.raises(UserError) as info:
        load_profile(str(tmp_path / "typo.yaml"))
    assert "\n" not in str(info.value)


def test_ablation_is_tiny_plus_its_differences():
    tiny, ablation = load_profile("tiny").model_dump(), load_profile("ablation").model_dump()

    def flat(tree, prefix=""):
        for key, value in tree.items():
            nested = isinstance(value, dict) and key != "config"  # a model's config dict is one value
            yield from flat(value, f"{prefix}{key}.") if nested else [(f"{prefix}{key}", value)]

    a, t = dict(flat(ablation)), dict(flat(tiny))
    assert a.keys() == t.keys()
    differ = {k for k in t if a[k] != t[k]}
    # Everything else comes from tiny (so a change to tiny reaches the ablation too).
    assert differ <= {
        "name", "runtime.torch_threads", "data.ingest.images_per_shard", "data.compose.min_crop_side",
        "model.connector.heads", "model.connector.width", "model.decoder.unet.config",
        "eval.chunk_size", "eval.benchmark.max_subjects", "eval.benchmark.max_templates",
        "eval.benchmark.multi_combinations", "eval.report.grid_cell", "eval.report.max_grids",
        *(f"train.{s}.{k}" for s in ("pretrain", "tune") for k in (
            "batch_size", "max_steps", "warmup_steps", "checkpoint_every", "sample_every", "shuffle_buffer",
            "attn_loss.weight")),
    }
    assert a["model.decoder.unet.config"] == {"cross_attention_dim": 64, "projection_class_embeddings_input_dim": 112}
    assert (a["train.pretrain.max_steps"], a["train.tune.max_steps"], a["eval.benchmark.max_subjects"]) == (200, 100, None)


def test_real_profiles_follow_their_papers():
    mumu, unimo = load_profile("mumu-sdxl"), load_profile("unimo-g")
    # MUMU (arXiv 2406.18790v2): 16-layer connector, 324 tokens an image, rank-8 LoRAs, Table 1's learning
    # rates, crops of at least 150x150 px and at most 75 % of the image, <= 3 a prompt, DDIM 50, guidance 6.
    assert mumu.model.connector.layers == 16 and mumu.model.encoder.image_tokens == 324
    assert mumu.model.encoder.lora.r == mumu.model.decoder.lora.r == 8
    for stage in (mumu.train.pretrain, mumu.train.tune):
        assert (stage.lr.connector, stage.lr.encoder, stage.lr.unet) == (1e-5, 3e-6, 5e-6)
        assert stage.prompt_mode == "mumu" and stage.attn_loss.weight == 0 and stage.augment.share == 0.2
    c = mumu.data.compose
    assert (c.min_crop_area, c.max_crop_fraction, c.max_images_per_prompt, c.image_share) == (22500, 0.75, 3, 1.0)
    assert (mumu.eval.sampler.name, mumu.eval.sampler.steps, mumu.eval.sampler.guidance_scale) == ("ddim", 50, 6.0)
    # UNIMO-G (arXiv 2401.13388): MLLM frozen, only the UNet (+ this architecture's connector) trained,
    # segments for a random subset of entities, visual-enhanced learning in stage 2, DDIM 50 at guidance 5.
    assert unimo.model.encoder.train_language_model == "frozen" and unimo.model.decoder.train == "full"
    assert (unimo.train.pretrain.prompt_mode, unimo.train.tune.prompt_mode) == ("text", "unimo")
    assert unimo.train.tune.attn_loss.weight > 0 and unimo.train.tune.lr.unet == 1e-5
    assert 0 < unimo.data.compose.image_share < 1 and unimo.eval.benchmark.prompt_mode == "unimo"
    assert (unimo.eval.sampler.steps, unimo.eval.sampler.guidance_scale, unimo.eval.samples_per_prompt) == (50, 5.0, 4)
    # Inherited from mumu-sdxl, not copied: the same checkpoints.
    assert unimo.model.decoder.unet == mumu.model.decoder.unet and unimo.data.detect == mumu.data.detect
