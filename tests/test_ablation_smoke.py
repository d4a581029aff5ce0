"""Plumbing of the toy ablation (bench/ablation.py) with 1–2 steps: the table's structure, and that the three
arms really train different things (a: no tuning stage at all, b: tuned with attn weight 0, c: with > 0)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import ablation
from bench import ablation_metrics as M
from mumu import SAMPLES_DIR
from mumu.data.scenes import COLOUR_NAMES

EMOJI = SAMPLES_DIR.parent / "emoji"


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablation")
    res = ablation.main(["--steps-pretrain", "2", "--steps-tune", "1", "--seeds", "0", "1", "--scenes", "12",
                         "--samples", "1", "--sample-steps", "2", "--heldout", "2", "--seen", "1",
                         "--mllm-steps", "3", "--out", str(out)])
    return out, res


def test_table_has_three_arms_and_all_columns(result):
    out, res = result
    lines = res["table"].splitlines()
    assert lines[0].startswith("| Method | heldout identified | heldout margin | seen identified | seen margin | all adherence")
    rows = lines[2:]
    assert [r.split("|")[1].strip()[:3] for r in rows] == ["(a)", "(b)", "(c)", "pro"]
    for r in rows[:3]:
        cells = [c.strip() for c in r.strip("|").split("|")[1:]]
        assert len(cells) == len(ablation.COLUMNS) + 1 and all("±" in c for c in cells)
    saved = json.loads((out / "results.json").read_text())
    assert saved["table"] == res["table"] and sorted(saved["per_seed"]) == ["0", "1"]
    assert len(saved["prompts"]) == 3 and len(saved["heldout_subjects"]) == 2
    # UNIMO-G's prompts by default: the subject's image in place of its name, in tuning and in evaluation
    assert saved["budget"]["prompt_mode"] == "unimo" and saved["budget"]["recolour"] == 0.5
    assert all(p.startswith(("a <image> on a ", "an <image> on a ")) for p in saved["prompts"]), saved["prompts"]
    for seed in ("0", "1"):
        for arm in "abc":
            assert (out / f"seed-{seed}" / f"samples-{arm}.png").is_file()
            scores = saved["per_seed"][seed][arm]
            assert 0.0 <= scores["all/adherence"] <= 1.0 and 0.0 <= scores["heldout/fidelity"] <= 1.0
            assert 0.0 <= scores["heldout/identified"] <= 1.0 and 0.0 <= scores["seen/identified"] <= 1.0


def test_arms_train_different_things_with_the_same_budget(result):
    out, res = result
    for seed in ("0", "1"):
        a, b, c = (res["arms"][seed][k] for k in "abc")
        # (a): stage 1 only, resumed from stage 1's step-2 checkpoint for the tuning budget; no tune run.
        assert (a["pretrain_steps"], a["tune_steps"], a["resumed_from"]) == (3, 0, 2)
        assert a["tune_checkpoint"] is None and not (out / f"seed-{seed}" / "a-tune").exists()
        # (b) and (c): the same stage-1 model, then tuning: b without, c with the attention loss.
        assert (b["pretrain_steps"], b["tune_steps"]) == (c["pretrain_steps"], c["tune_steps"]) == (2, 1)
        assert Path(b["tune_checkpoint"]).is_dir() and Path(c["tune_checkpoint"]).is_dir()
        assert b["attn_weight"] == 0.0 and b["attn_mean"] == 0.0
        assert c["attn_weight"] > 0 and c["attn_mean"] > 0
    assert res["budget"]["steps_pretrain"] == 2 and res["budget"]["steps_tune"] == 1
    # every arm of every seed reads prompts through the one aligned toy MLLM, loaded from where it was saved
    assert res["budget"]["mllm"]["steps"] == 3 and res["budget"]["captions"] == "colours"
    for seed in ("0", "1"):
        for arm in "abc":
            saved = json.loads((Path(res["arms"][seed][arm]["model_dir"]) / "mumu_config.json").read_text())
            assert saved["model"]["encoder"]["model"]["pretrained"] == str(out / "mllm" / "model")
    # training captions name each emoji's colours, and the data stage took the whole phrase as the entity
    phrases = (out / "data" / "entities.txt").read_text().split("\n")
    assert phrases[0] and all(p.split()[0] in COLOUR_NAMES for p in phrases if p)


def test_colour_metrics_rank_the_right_subject_and_background():
    hists = {f: M.subject_hist(EMOJI, f) for f in ("1f34c.webp", "1f416.webp", "1f335.webp")}  # banana, pig, cactus
    img = M.reference_render(EMOJI, "1f34c.webp", "blue")
    others = [hists["1f416.webp"], hists["1f335.webp"]]
    s = M.score_image(img, "blue", hists["1f34c.webp"], others)
    assert s["adherence"] == 1.0 and s["fidelity"] > 0.5 and s["margin"] > 0.2
    assert M.score_image(img, "pink", hists["1f34c.webp"], others)["adherence"] == 0.0
    blank = Image.new("RGB", (64, 64), (72, 118, 214))  # nothing drawn: no fidelity, background still right
    assert M.score_image(blank, "blue", hists["1f34c.webp"], others) == {
        "fidelity": 0.0, "margin": 0.0, "adherence": 1.0, "foreground_share": 0.0}
    h = M.colour_hist(np.array([[0, 0, 0], [255, 255, 255]], np.uint8))
    assert h[0] == 0.5 and h[-1] == 0.5 and h.sum() == 1.0
