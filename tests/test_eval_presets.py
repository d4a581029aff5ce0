"""Named evaluation protocols (UNIMO-G's) and published figures printed beside a run on the published benchmarks."""

import json

import pytest

from mumu.cli import main
from mumu.config import load_profile
from mumu.errors import UserError
from mumu.eval.presets import protocol_deviations, protocol_overrides, published_for
from mumu.eval.report import write_report
from mumu.eval.runner import evaluate
from tests.eval_fakes import CountingGenerator, PixelEncoders
from tests.test_eval_dreambench import make_repository

REAL_ENCODERS = {"eval.dino": {"pretrained": "facebook/dino-vits16"},
                 "eval.clip": {"pretrained": "openai/clip-vit-base-patch32"}}


def test_unimo_g_protocol_sets_its_settings_and_names_what_differs():
    ev = load_profile("tiny", protocol_overrides("unimo-g")).eval
    assert (ev.protocol, ev.sampler.name, ev.sampler.steps, ev.sampler.guidance_scale, ev.samples_per_prompt) == (
        "unimo-g", "ddim", 50, 5.0, 4)
    assert protocol_deviations(ev) == []
    changed = load_profile("tiny", {**protocol_overrides("unimo-g"), "eval.sampler.steps": 20}).eval
    assert protocol_deviations(changed) == ["eval.sampler.steps 20, not 50"]
    # the tiny profile's own settings, recorded as the UNIMO-G protocol, differ in three of them
    recorded = load_profile("tiny", {"eval.protocol": "unimo-g"}).eval
    assert protocol_deviations(recorded) == ["eval.sampler.steps 20, not 50",
                                             "eval.sampler.guidance_scale 3.0, not 5.0", "eval.samples_per_prompt 2, not 4"]
    # a benchmark whose protocol fixes 4 images per prompt (DreamBench) meets that setting
    assert protocol_deviations(recorded, samples_per_prompt=4) == ["eval.sampler.steps 20, not 50",
                                                                   "eval.sampler.guidance_scale 3.0, not 5.0"]
    assert protocol_deviations(load_profile("tiny").eval) == []  # no protocol named: nothing to differ from
    with pytest.raises(UserError, match="unknown evaluation protocol 'dreambooth'"):
        protocol_overrides("dreambooth")


def test_cli_rejects_an_unknown_protocol_with_one_line(tmp_path, capsys):
    assert main(["evaluate", "--protocol", "nope", "--compare", str(tmp_path), str(tmp_path)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "unknown evaluation protocol 'nope'" in err[0]


def test_published_figures_only_for_published_benchmarks_with_pretrained_encoders():
    tiny = load_profile("tiny").eval
    real = load_profile("tiny", REAL_ENCODERS).eval
    assert published_for("dreambench", tiny) == []  # random-weight encoders: not comparable
    (dream,) = published_for("dreambench", real)
    assert (dream["model"], dream["dino"], dream["clip_i"], dream["clip_t"]) == ("UNIMO-G", 0.668, 0.841, 0.329)
    (multi,) = published_for("multibench", real)
    assert (multi["dino"], multi["clip_i"], multi["clip_t"]) == (0.436, 0.665, 0.298)
    assert "2401.13388" in dream["source"]
    assert published_for("toy", real) == published_for("folder", real) == []


def test_report_prints_published_figures_under_the_run_marked_as_other_models(tmp_path):
    root = make_repository(tmp_path / "dreambooth", {"backpack_dog": 2, "cat2": 2})
    overrides = {**protocol_overrides("unimo-g"), **REAL_ENCODERS, "eval.benchmark.root": str(root),
                 "eval.benchmark.kinds": ["single"], "eval.benchmark.max_templates": 1, "eval.sampler.steps": 30}
    cfg = load_profile("tiny", overrides).eval
    # the encoders named in the config are not loaded here: the fakes score, the config only says what would
    report = evaluate(CountingGenerator(), tmp_path / "eval", PixelEncoders(), cfg, run="ckpt")
    md = report.markdown
    run_line = md.index("| ckpt | dreambooth-single |")
    published = md.index("### Published figures: other models, not this run")
    assert run_line < published < md.index("## Samples")
    assert "| UNIMO-G (other model) | dreambooth-single | 0.668 | 0.841 | 0.329 |" in md
    assert "Protocol preset **unimo-g**, except: eval.sampler.steps 30, not 50." in md
    saved = json.loads(report.json_path.read_text())
    assert saved["protocol"]["dreambooth-single"]["preset_deviations"] == ["eval.sampler.steps 30, not 50"]
    assert [f["model"] for f in saved["scores"][0]["published"]] == ["UNIMO-G"]

    # the same scores without published figures print no such section
    plain = write_report([{**saved["scores"][0], "published": []}], tmp_path / "plain")
    assert "Published figures" not in plain.markdown
