"""The trainer's inputs: the run config and the dataset are checked in full, with every problem listed at once."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from tiny_checkpoint import DIMENSIONS_TOML

from vmix_train.config import ConfigError, load_config
from vmix_train.dataset import DatasetError, load_dataset

DIMS = ["color", "lighting"]

GOOD_CONFIG = (
    """
[model]
checkpoint = "model.safetensors"

[data]
folder = "data"

[output]
folder = "out"

"""
    + DIMENSIONS_TOML
    + """
[train]
steps = 100
learning_rate = 5e-5
mixed_precision = "bf16"
lora_rank = 4
"""
)


@pytest.fixture
def run_folder(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "data").mkdir()
    return tmp_path


def test_good_config(run_folder):
    path = run_folder / "run.toml"
    path.write_text(GOOD_CONFIG)
    config = load_config(path)
    assert config.checkpoint == run_folder / "model.safetensors" and config.dataset == run_folder / "data"
    assert [d.name for d in config.dimensions] == DIMS and config.dimensions[1].positive == "natural lighting"
    assert config.train.steps == 100 and config.train.learning_rate == 5e-5 and config.train.lora_rank == 4
    assert config.train.batch_size == 4  # default


def test_bad_config_lists_every_problem(run_folder):
    bad = (
        GOOD_CONFIG.replace('checkpoint = "model.safetensors"', 'checkpoint = "missing.ckpt"')
        .replace('mixed_precision = "bf16"', 'mixed_precision = "fp8"\nsteps_per_epoch = 3')
        .replace('name = "lighting"', 'name = "color"')
        .replace("steps = 100", 'steps = "many"')
    )
    path = run_folder / "run.toml"
    path.write_text(bad)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "run.toml" in message
    for words in (
        "missing.ckpt does not exist",
        "mixed_precision = 'fp8' is out of range",
        "steps_per_epoch",
        "repeated: ['color']",
        "steps must be int, got 'many'",
    ):
        assert words in message, message
    assert len(info.value.problems) == 5


def test_config_not_toml_or_missing(tmp_path):
    (tmp_path / "run.toml").write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "run.toml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nothing.toml")


def write_dataset(folder, entries, images):
    for name in images:
        Image.new("RGB", (8, 8), (200, 10, 10)).save(folder / name)
    (folder / "metadata.jsonl").write_text("\n".join(e if isinstance(e, str) else json.dumps(e) for e in entries))


def test_good_dataset(tmp_path):
    write_dataset(
        tmp_path,
        [
            {"file_name": "a.png", "caption": "a red square", "labels": {"color": True}},
            {"file_name": "b.png", "caption": "a lamp", "labels": ["lighting", "color"]},
        ],
        ["a.png", "b.png"],
    )
    examples = load_dataset(tmp_path, DIMS)
    assert [(e.image.name, e.caption, e.labels) for e in examples] == [
        ("a.png", "a red square", (1.0, 0.0)),
        ("b.png", "a lamp", (1.0, 1.0)),
    ]


def test_bad_dataset_lists_every_problem_at_once(tmp_path):
    write_dataset(
        tmp_path,
        [
            {"file_name": "a.png", "caption": "", "labels": {"color": True}},
            {"file_name": "b.png", "caption": "fine", "labels": {"mood": True}},
            {"file_name": "c.png", "caption": "broken file"},
            {"file_name": "gone.png", "caption": "no file"},
            "{not json",
            {"file_name": "a.png", "caption": "again"},
        ],
        ["a.png", "b.png", "stray.png"],
    )
    (tmp_path / "c.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError) as info:
        load_dataset(tmp_path, DIMS)
    message = str(info.value)
    expected = [
        "a.png: missing caption",
        "b.png: unknown dimension name(s) ['mood']",
        "c.png: unreadable image",
        "gone.png: file not found",
        "metadata.jsonl line 5: not valid JSON",
        "metadata.jsonl line 6: a.png is listed twice",
        "stray.png: an image with no entry in metadata.jsonl",
    ]
    for words in expected:
        assert words in message, message
    assert len(info.value.problems) == len(expected)
    assert "nothing was trained" in message


def test_dataset_without_metadata(tmp_path):
    with pytest.raises(DatasetError, match=r"metadata\.jsonl is missing"):
        load_dataset(tmp_path, DIMS)
