"""The command line: checks first, one clear message and exit status 2 for a user's mistake, a full run otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image
from tiny_checkpoint import TinyLdmModel, original_config, write_tokenizer

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
    assert main(["--config", str(run_folder / "run.toml")]) == 2
    err = capsys.readouterr().err
    assert "9.png: missing caption" in err and "unknown dimension name(s) ['colour']" in err
    assert "Traceback" not in err
    (run_folder / "run.toml").write_text(RUN.replace("steps = 2", "steps = 0"))
    assert main(["--config", str(run_folder / "run.toml")]) == 2
    assert "[train] steps = 0 is out of range" in capsys.readouterr().err
