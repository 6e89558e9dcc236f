"""The command line: checks first, one clear message and exit status 2 for a user's mistake, a full run otherwise."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file
from tiny_checkpoint import TinyLdmModel, original_config, write_tokenizer

import vmix_train.__main__ as cli
from vmix_train.__main__ import main
from vmix_train.config import load_config

RUN = """
[model]
checkpoint = "tiny.safetensors"
config = "tiny.yaml"
tokenizer = "tokenizer"

[data]
folder = "data"

[output]
folder = "out"

[[dimensions]]
name = "color"
positive = "vivid colour"
negative = "sks1"

[train]
steps = 2
batch_size = 2
resolution = 16
bucket_step = 8
save_every = 1
sample_count = 0
"""


@pytest.fixture
def run_folder(tmp_path):
    TinyLdmModel().save(tmp_path / "tiny.safetensors")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(original_config()))
    write_tokenizer(tmp_path / "tokenizer")
    data = tmp_path / "data"
    data.mkdir()
    lines = []
    for i in range(3):
        Image.new("RGB", (16, 16), (80 * i, 60, 90)).save(data / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "caption": "a cat", "labels": ["color"] if i else []}))
    (data / "metadata.jsonl").write_text("\n".join(lines))
    (tmp_path / "run.toml").write_text(RUN)
    return tmp_path


def test_check_stops_before_training(run_folder, capsys):
    assert main(["--config", str(run_folder / "run.toml"), "--check"]) == 0
    out = capsys.readouterr().out
    assert "fine" in out
    assert "base model: sd1, epsilon prediction; learning rate 0.0001, 16 px" in out  # the family's default rate
    assert not (run_folder / "out").exists()


def test_a_run_writes_the_adapter_and_a_rerun_resumes_to_the_end(run_folder, capsys):
    assert main(["--config", str(run_folder / "run.toml"), "--no-progress", "--device", "cpu"]) == 0
    assert (run_folder / "out" / "out.safetensors").is_file()
    assert "models/VMix" in capsys.readouterr().out
    assert main(["--config", str(run_folder / "run.toml"), "--no-progress", "--device", "cpu"]) == 0
    assert "resuming at step 2" in capsys.readouterr().out


@pytest.mark.parametrize("example", ["train-sd15.toml", "train-sdxl.toml"])
def test_the_example_configs_are_valid_apart_from_their_paths(example):
    with pytest.raises(Exception) as info:
        load_config(Path(__file__).parents[1] / "examples" / example)
    problems = info.value.problems
    assert problems and all("does not exist" in p for p in problems), problems


def test_user_mistakes_give_one_message_and_status_2(run_folder, capsys):
    metadata = run_folder / "data" / "metadata.jsonl"
    metadata.write_text(metadata.read_text() + '\n{"file_name": "9.png", "caption": "", "labels": {"colour": true}}')
    err = failure(capsys, ["--config", str(run_folder / "run.toml")])
    assert "9.png: missing caption" in err and "unknown dimension name(s) ['colour']" in err


def failure(capsys, argv) -> str:
    """Run the command line, expect a user mistake: exit status 2 and one [VMix] message, no traceback."""
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's own exit, through the trainer's parser
        status = exc.code
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("[VMix] ") and err.count("[VMix]") == 1, err
    assert "Traceback" not in err
    return err


@pytest.fixture
def no_model_loading(monkeypatch):
    """A check that must come before the base model is loaded fails the test if the model is loaded first."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("the base model was loaded before the mistake was found")

    monkeypatch.setattr(cli, "load_single_file", refuse)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        ([], "the following arguments are required: --config"),
        (["--config", "run.toml", "--epochs", "3"], "unrecognized arguments: --epochs 3"),
        (["--config", "run.toml", "--device", "foo"], "--device 'foo' is not a device VMix can use"),
        (["--config", "run.toml", "--device", "cuda"], "--device cuda: no CUDA GPU is available"),
        (["--config", "run.toml", "--device", "cpu:3"], "the CPU has no index"),
        (["--config", "nothing.toml"], "nothing.toml' has 1 problem(s):\n  - the file does not exist"),
        (["--config", "."], "is a folder; give the run's .toml file"),
    ],
)
def test_command_line_mistakes(run_folder, capsys, monkeypatch, no_model_loading, argv, words):
    monkeypatch.chdir(run_folder)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert words in failure(capsys, argv)


def test_a_gpu_index_this_machine_lacks(run_folder, capsys, monkeypatch, no_model_loading):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    err = failure(capsys, ["--config", str(run_folder / "run.toml"), "--device", "cuda:7", "--check"])
    assert "--device cuda:7: this machine has 1 CUDA GPU(s), cuda:0 to cuda:0" in err


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (("steps = 2", "steps = 0"), "[train] steps = 0 is out of range (allowed: a whole number ≥ 1)"),
        (
            ("steps = 2", "seed = -1"),
            "seed = -1 is out of range (allowed: a whole number from 0 to 18446744073709551615)",
        ),
        (("steps = 2", "seed = 18446744073709551616"), "seed = 18446744073709551616 is out of range"),
        (("steps = 2", "learning_rate = 2.0"), "learning_rate = 2.0 is out of range (allowed: a number from 0"),
        (("steps = 2", "adam_epsilon = inf"), "adam_epsilon = inf is out of range (allowed: a number above 0"),
        (("steps = 2", "ema_decay = 1.0"), "ema_decay = 1.0 is out of range (allowed: 0 (no EMA), or a number above 0"),
        (("steps = 2", 'lr_scheduler = "step"'), "lr_scheduler = 'step' is out of range (allowed: one of ('constant'"),
        (
            ("bucket_step = 8", "bucket_step = 12"),
            "bucket_step = 12 is out of range (allowed: a multiple of 8 from 8 to 8192)",
        ),
        (("steps = 2", "num_workers = -1"), "num_workers = -1 is out of range (allowed: a whole number from 0 to 256)"),
        (("steps = 2", "buckets = 1"), "[train] buckets must be bool, got 1"),
        (("[output]", "[output]\ntensorboard = 1"), "[output] tensorboard must be true or false, got 1"),
        (("[output]", "[output]\nmodel = 3"), "[output] unknown key(s) ['model']; known: folder, name, tensorboard"),
    ],
)
def test_config_mistakes_name_the_allowed_range(run_folder, capsys, no_model_loading, change, words):
    (run_folder / "run.toml").write_text(RUN.replace(*change))
    assert words in failure(capsys, ["--config", str(run_folder / "run.toml"), "--check"])


def test_output_folder_mistakes_are_found_before_loading(run_folder, capsys, monkeypatch, no_model_loading):
    config = ["--config", str(run_folder / "run.toml"), "--check"]
    (run_folder / "out").write_text("a file where the output folder should be")
    assert f"[output] folder {run_folder / 'out'} is a file" in failure(capsys, config)
    (run_folder / "run.toml").write_text(RUN.replace('folder = "out"', 'folder = "out/run"'))
    assert "cannot be created: " in failure(capsys, config)
    (run_folder / "out").unlink()
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != run_folder)  # as for a non-root user
    assert f"[output] folder {run_folder / 'out' / 'run'} cannot be created: {run_folder} is not writable" in failure(
        capsys, config
    )


def test_tensorboard_asked_for_but_not_installed(run_folder, capsys, monkeypatch, no_model_loading):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    (run_folder / "run.toml").write_text(RUN.replace("[output]", "[output]\ntensorboard = true"))
    err = failure(capsys, ["--config", str(run_folder / "run.toml"), "--check"])
    assert "tensorboard = true needs the tensorboard package: pip install tensorboard" in err


def test_a_broken_checkpoint_is_one_message(run_folder, capsys):
    """A checkpoint with a whole UNet and VAE whose text encoder lacks a layer's weights (a merge gone wrong)."""
    path = run_folder / "tiny.safetensors"
    weights = load_file(str(path))
    del weights["cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"]
    save_file(weights, str(path))
    err = failure(capsys, ["--config", str(run_folder / "run.toml"), "--check"])
    assert "tiny.safetensors': is not a complete checkpoint this trainer can load" in err


def test_the_largest_seed_trains_and_files_get_the_umask_permissions(run_folder, capsys):
    """Seed 2**64 - 1 reaches every seeded path: the adapter's and the LoRA's initialisation, the data order,
    dropout, latents, noise and the sample grid; every file written follows the umask (027 here: rw-r-----)."""
    config = RUN.replace("steps = 2", "steps = 2\nseed = 18446744073709551615\nlora_rank = 1\ncaption_dropout = 0.5")
    (run_folder / "run.toml").write_text(config.replace("sample_count = 0", "sample_count = 1\nsample_steps = 2"))
    previous = os.umask(0o027)
    try:
        assert main(["--config", str(run_folder / "run.toml"), "--no-progress", "--device", "cpu"]) == 0
    finally:
        os.umask(previous)
    written = [p for p in [*(run_folder / "out").rglob("*"), *(run_folder / "data" / "vmix-cache").iterdir()]]
    files = [p for p in written if p.is_file()]
    assert {p.suffix for p in files} == {".safetensors", ".png"} and len(files) >= 8
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o640}, [(p.name, oct(p.stat().st_mode)) for p in files]
