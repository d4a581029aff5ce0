"""The command line: outputs on success, one line and exit code 2 on the user's mistakes."""

import pytest
from PIL import Image

from mumu.cli import main
from mumu.config import load_profile


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from models.mumu_model import MumuModel

    path = tmp_path_factory.mktemp("model")
    MumuModel.from_config(load_profile("tiny").model).save_pretrained(path)
    return path


def _one_error_line(capsys, *needles):
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("mumu: error:"), err
    for needle in needles:
        assert needle in err[0]


def test_generate_writes_images_for_an_inline_multimodal_prompt(saved_model, tmp_path):
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "red.png")
    out = tmp_path / "out.png"
    code = main(["generate", "--checkpoint", str(saved_model), "--prompt", "a <image:red.png> ball on grass",
                 "--base-dir", str(tmp_path), "--out", str(out), "--n", "2", "--steps", "2"])
    assert code == 0
    images = [Image.open(tmp_path / f"out-{i}.png") for i in range(2)]
    assert all(im.size == (64, 64) for im in images)
    assert images[0].tobytes() != images[1].tobytes()  # seeds seed and seed+1


@pytest.mark.parametrize("argv, needles", [
    (["generate", "--checkpoint", "{model}", "--prompt", "a <image:missing.png> cat", "--out", "{tmp}/o.png"],
     ["missing.png"]),
    (["generate", "--checkpoint", "{tmp}/nothing", "--prompt", "a cat", "--out", "{tmp}/o.png"], ["does not exist"]),
    (["pretrain", "--data", "{tmp}", "--out", "{tmp}/run"], ["manifest.json not found"]),
    (["tune", "--data", "{tmp}", "--init", "{tmp}", "--out", "{tmp}/run"], ["manifest.json not found"]),
    (["evaluate", "--checkpoint", "{tmp}", "--out", "{tmp}/rep"], ["neither a training run"]),
    (["build-data", "--input", "{tmp}/none", "--out", "{tmp}/o"], ["no such file"]),
    (["pipeline", "--profile", "nope"], ["unknown profile 'nope'"]),
    (["pipeline", "--set", "train.pretrain.max_steps=-x"], ["train.pretrain.max_steps"]),
])
def test_user_mistakes_give_one_line_and_exit_2(argv, needles, saved_model, tmp_path, capsys):
    argv = [a.format(model=saved_model, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    _one_error_line(capsys, *needles)


def test_generate_runs_on_the_profiles_runtime_device(saved_model, tmp_path, monkeypatch, capsys):
    import torch

    import mumu.generate as gen
    from mumu.errors import UserError

    devices, real_load = [], gen.load_model

    def load(path, device="cpu"):
        devices.append(torch.device(device))
        if torch.device(device).type == "cuda":  # no GPU here: stop where the model would move to it
            raise UserError("stopped before moving to cuda")
        return real_load(path, device)

    monkeypatch.setattr(gen, "load_model", load)
    argv = ["generate", "--checkpoint", str(saved_model), "--prompt", "a cat", "--steps", "1"]
    assert main([*argv, "--out", str(tmp_path / "cpu.png"), "--set", "runtime.device=cpu"]) == 0
    assert devices == [torch.device("cpu")] and (tmp_path / "cpu.png").is_file()

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a CUDA machine, stood in
    for device in ("cuda", "auto"):
        assert main([*argv, "--out", str(tmp_path / "gpu.png"), "--set", f"runtime.device={device}"]) == 2
    assert devices[1:] == [torch.device("cuda"), torch.device("cuda")]
    capsys.readouterr()

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([*argv, "--out", str(tmp_path / "none.png"), "--set", "runtime.device=cuda"]) == 2
    _one_error_line(capsys, "runtime.device is 'cuda' but CUDA is not available")
    assert len(devices) == 3 and not (tmp_path / "none.png").exists() and not (tmp_path / "gpu.png").exists()


def test_profile_show_prints_the_resolved_profile_as_yaml_that_loads_back(tmp_path, capsys):
    import yaml

    from mumu.config import config_hash

    assert main(["profile", "show", "tiny", "--set", "train.pretrain.max_steps=7",
                 "--set", "data.detect.box_threshold=0.3"]) == 0
    text = capsys.readouterr().out
    tree = yaml.safe_load(text)
    assert tree["train"]["pretrain"]["max_steps"] == 7 and tree["data"]["detect"]["box_threshold"] == 0.3
    assert tree["train"]["tune"]["lr"]["unet"] == 1.0e-3  # from the profile file
    assert tree["eval"]["sampler"]["timestep_spacing"] == "trailing"  # a default the file does not set
    (tmp_path / "shown.yaml").write_text(text)
    expected = load_profile("tiny", {"train.pretrain.max_steps": 7, "data.detect.box_threshold": 0.3})
    assert config_hash(load_profile(str(tmp_path / "shown.yaml"))) == config_hash(expected)


@pytest.mark.parametrize("argv, needle", [
    (["profile", "show", "nope"], "unknown profile 'nope'"),
    (["profile", "show", "tiny", "--set", "train.tune.batch_size=0"], "train.tune.batch_size"),
])
def test_profile_show_rejects_a_bad_profile_with_one_line(argv, needle, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("mumu: error:") and needle in err[0], err
    assert captured.out == ""


@pytest.mark.parametrize("stage, extra", [("pretrain", []), ("tune", ["--init", "I"])])
def test_max_steps_is_shorthand_for_the_profile_override(stage, extra, monkeypatch):
    """--max-steps N reaches the flow as the profile's train.STAGE.max_steps=N, in the config the CLI resolved: the
    same run as --set gives."""
    import importlib

    import mumu.cli
    import mumu.data.shards
    import mumu.train.entry

    flow_module = importlib.import_module(f"flows.{stage}")
    calls = []
    monkeypatch.setattr(mumu.data.shards, "shard_urls", lambda data: ["D"])
    monkeypatch.setattr(mumu.cli, "model_dir", lambda path: path)
    monkeypatch.setattr(flow_module, stage, lambda **kw: calls.append(kw) or {})
    monkeypatch.setattr(mumu.train.entry, "final_line", lambda result: "done")
    argv = [stage, "--data", "D", "--out", "O", *extra]
    assert main([*argv, "--max-steps", "5"]) == 0
    assert main([*argv, "--set", f"train.{stage}.max_steps=5"]) == 0
    assert calls[0] == calls[1] and set(calls[0]) == {"data", "out", "profile", "resume", *(a[2:] for a in extra[:1])}
    assert getattr(calls[0]["profile"].train, stage).max_steps == 5 != getattr(load_profile("tiny").train, stage).max_steps
