"""python -m vmix_train.evaluate on a tiny checkpoint, adapter and metric models: every output is written, λ = 0
equals the base model exactly, a second run generates nothing, and bad configs are refused before anything runs."""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

import pytest
import torch
import yaml
from helpers import random_adapter, tiny_unet
from PIL import Image
from tiny_checkpoint import TinyLdmModel, original_config, write_tokenizer
from tiny_metric_models import ColourFeatures, write_random_inception, write_tiny_aesthetic_head, write_tiny_clip

import vmix_train.evaluate as evaluate
from vmix_ext.weights import AdapterFileError, save_adapter
from vmix_train.evaluate_config import EvalConfigError, load_eval_config

CONFIG = """
[model]
checkpoint = "tiny.safetensors"
config = "tiny.yaml"
tokenizer = "tokenizer"

[adapters]
files = ["adapters/*.safetensors"]

[prompts]
file = "prompts.txt"

[sampling]
seeds = [0, 1]
steps = 2
size = 16
batch_size = 3

[vmix]
lambdas = [0, 1.5]
dimensions = ["all", "each", "none", "color, focus:0.5"]

[metrics]
clip = "clip"
aesthetic_head = "head.safetensors"
fid_reference = "reference"
fid_inception = "inception.safetensors"

[output]
folder = "out"
"""
PROMPTS = ["a red fox", "a boat at dusk"]
# base, λ 0, and λ 1.5 × (all, only color, only lighting, only focus, none, "color, focus:0.5")
SETTINGS = 8
IMAGES = SETTINGS * len(PROMPTS) * 2


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evaluation")
    model = TinyLdmModel()
    model.save(folder / "tiny.safetensors")
    (folder / "tiny.yaml").write_text(yaml.safe_dump(original_config()), encoding="utf-8")
    write_tokenizer(folder / "tokenizer")
    (folder / "adapters").mkdir()
    save_adapter(random_adapter(model.unet), folder / "adapters" / "vivid.safetensors")
    (folder / "prompts.txt").write_text("\n".join(PROMPTS) + "\n\n", encoding="utf-8")
    write_tiny_clip(folder / "clip")
    write_tiny_aesthetic_head(folder / "head.safetensors")
    write_random_inception(folder / "inception.safetensors")
    (folder / "reference").mkdir()
    for n in range(4):
        Image.new("RGB", (16, 16), (40 * n, 200 - 30 * n, 90)).save(folder / "reference" / f"{n}.png")
    (folder / "eval.toml").write_text(CONFIG, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def loaded(workspace):
    """The config, the base model and fast metric models (FID on colour features instead of Inception's 2048)."""
    config = load_eval_config(workspace / "eval.toml")
    base = evaluate.load_base(config, torch.device("cpu"))
    metrics = dataclasses.replace(evaluate.load_metric_models(config), fid_features=ColourFeatures())
    return config, base, metrics


@pytest.fixture
def count_generations(monkeypatch):
    made: list[int] = []
    original = evaluate.sample

    def counting(base, prompts, seeds, size, **kwargs):
        made.append(len(prompts))
        return original(base, prompts, seeds, size, **kwargs)

    monkeypatch.setattr(evaluate, "sample", counting)
    return made


@pytest.fixture(scope="module")
def first_run(loaded):
    config, base, metrics = loaded
    return evaluate.run_evaluation(config, base=base, metrics=metrics, progress=False, log=lambda _: None)


def read_csv(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_the_evaluation_writes_every_output(loaded, first_run):
    config, _, _ = loaded
    out = config.output_dir
    assert first_run.generated == IMAGES
    assert len(list((out / "images").rglob("*-seed*.png"))) == IMAGES
    assert len(list((out / "images").rglob("setting.json"))) == SETTINGS
    assert sorted(p.name for p in (out / "grids").iterdir()) == ["prompt-00000.png", "prompt-00001.png"]
    with Image.open(out / "grids" / "prompt-00000.png") as grid:
        assert grid.width > 2 * 16 and grid.height > SETTINGS * 16  # a row per setting, a column per seed
    with Image.open(out / "lambda-sweep.png") as plot:
        assert plot.size[0] > 1000 and len(set(plot.convert("RGB").getdata())) > 5  # something was drawn

    markdown = (out / "results.md").read_text(encoding="utf-8")
    assert "| Model | λ | Dimensions | FID ↓ | CLIP score ↑ | Aesthetic ↑ | Images |" in markdown
    assert "DDIM 2 steps, CFG 7.5, no negative prompt" in markdown
    table = read_csv(out / "results.csv")
    assert [row["dimensions"] for row in table] == [
        "",
        "any",
        "all",
        "only color",
        "only lighting",
        "only focus",
        "none",
        "color, focus:0.5",
    ]
    assert all(row["images"] == "4" for row in table)
    scores = read_csv(out / "scores.csv")
    assert len(scores) == IMAGES
    for row in table:  # the table summarises the per-image scores: mean ± sample s.d. / √n
        mine = torch.tensor(
            [float(s["clip_score"]) for s in scores if s["setting"] == row["setting"]], dtype=torch.float64
        )
        assert float(row["clip_score"]) == pytest.approx(float(mine.mean()), rel=1e-9)
        assert float(row["clip_score_se"]) == pytest.approx(float(mine.std() / 2), rel=1e-9)
        assert 0 <= float(row["clip_score"]) <= 100
        assert float(row["fid"]) > 0 and row["aesthetic"] != ""


def test_lambda_zero_rows_equal_the_base_row_exactly(loaded, first_run):
    config, _, _ = loaded
    base_row, zero_row, *others = first_run.rows
    assert zero_row.setting.scale == 0 and zero_row.setting.adapter == "vivid"
    assert (zero_row.clip, zero_row.aesthetic, zero_row.fid) == (base_row.clip, base_row.aesthetic, base_row.fid)
    images = config.output_dir / "images"
    for base_image in (images / "base").glob("*.png"):
        with Image.open(base_image) as a, Image.open(images / "vivid" / "lambda-0" / base_image.name) as b:
            assert a.tobytes() == b.tobytes()
    assert 0 < base_row.clip.mean < 100 and base_row.clip.se > 0
    assert all(row.aesthetic != base_row.aesthetic for row in others)  # λ 1.5 does change the images


def test_a_second_run_generates_only_what_is_missing(loaded, first_run, count_generations):
    config, base, metrics = loaded
    quiet = {"base": base, "metrics": metrics, "progress": False, "log": lambda _: None}
    again = evaluate.run_evaluation(config, **quiet)
    assert again.generated == 0 and count_generations == []
    assert [row.clip for row in again.rows] == [row.clip for row in first_run.rows]
    victim = next((config.output_dir / "images" / "vivid" / "lambda-1.5" / "only-focus").glob("00001-*-seed1.png"))
    before = victim.read_bytes()
    victim.unlink()
    third = evaluate.run_evaluation(config, **quiet)
    assert third.generated == 1 and count_generations == [1]
    with Image.open(victim) as remade, Image.open(io.BytesIO(before)) as original:
        assert remade.tobytes() == original.tobytes()  # the same seed gives the same image again


def test_images_made_with_other_settings_are_not_mixed_in(loaded, first_run, count_generations):
    config, base, metrics = loaded
    quiet = {"base": base, "metrics": metrics, "progress": False, "log": lambda _: None}
    with pytest.raises(evaluate.EvaluationError, match=r"images[/\\]base holds images made with other settings.*steps"):
        evaluate.run_evaluation(dataclasses.replace(config, steps=3), **quiet)
    # A folder made another way, found after a setting that is new: nothing is written for the new one either.
    record = config.output_dir / "images" / "vivid" / "lambda-1.5" / "none" / "setting.json"
    original = record.read_text(encoding="utf-8")
    record.write_text(original.replace('"guidance": 7.5', '"guidance": 5.0'), encoding="utf-8")
    try:
        with pytest.raises(evaluate.EvaluationError, match=r"none holds images.*guidance: 5\.0 then, 7\.5 now"):
            evaluate.run_evaluation(dataclasses.replace(config, lambdas=(0.0, 0.5, 1.5)), **quiet)
    finally:
        record.write_text(original, encoding="utf-8")
    assert not (config.output_dir / "images" / "vivid" / "lambda-0.5").exists()
    assert count_generations == []


def test_an_adapter_for_another_family_is_refused_before_any_image(loaded, tmp_path, count_generations):
    config, base, metrics = loaded
    other = tmp_path / "sd2.safetensors"
    save_adapter(random_adapter(tiny_unet(1024)), other)
    wrong = dataclasses.replace(config, adapters=(other,), output_dir=tmp_path / "out")
    with pytest.raises(AdapterFileError, match=r"sd2\.safetensors.*made for SD 2\.x"):
        evaluate.run_evaluation(wrong, base=base, metrics=metrics, progress=False, log=lambda _: None)
    assert count_generations == [] and not (tmp_path / "out").exists()


def test_every_config_problem_is_reported_at_once(workspace, tmp_path):
    bad = CONFIG.replace('file = "prompts.txt"', 'file = "missing.txt"')
    bad = bad.replace("lambdas = [0, 1.5]", "lambdas = [0, 3]").replace('fid_inception = "inception.safetensors"\n', "")
    bad = bad.replace("[output]", "[output]\ncolour = 1").replace('"head.safetensors"', '"no-head.safetensors"')
    path = workspace / "bad.toml"
    path.write_text(bad, encoding="utf-8")
    with pytest.raises(EvalConfigError) as caught:
        load_eval_config(path)
    text = str(caught.value)
    assert "bad.toml' has 5 problem(s)" in text
    assert "[prompts] file" in text and "missing.txt does not exist" in text
    assert "[vmix] lambdas must be a list of numbers from 0 to 2" in text
    assert "fid_reference needs fid_inception" in text
    assert "[output] unknown key(s) ['colour']" in text
    assert "[metrics] aesthetic_head" in text and "no-head.safetensors does not exist" in text


def test_the_command_line_checks_everything_and_defaults_to_the_paper_sampler(workspace, capsys):
    assert evaluate.main(["--config", str(workspace / "eval.toml"), "--check", "--device", "cpu"]) == 0
    assert f"({IMAGES} images to evaluate)" in capsys.readouterr().out
    path = workspace / "defaults.toml"
    path.write_text(CONFIG.replace("steps = 2\n", ""), encoding="utf-8")
    defaults = load_eval_config(path)
    assert (defaults.steps, defaults.guidance, defaults.negative_prompt) == (25, 7.5, "")
    assert evaluate.main(["--config", str(workspace / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    torch.save([1, 2], workspace / "not-weights.pth")
    assert evaluate.main(["--convert-inception", str(workspace / "not-weights.pth"), str(workspace / "x")]) == 2
    assert "not-weights.pth does not hold a state dict" in capsys.readouterr().err


def test_the_example_config_has_only_paths_this_machine_lacks():
    with pytest.raises(EvalConfigError) as caught:
        load_eval_config(Path(__file__).parents[1] / "examples" / "eval.toml")
    problems = caught.value.problems
    assert problems and all("does not exist" in p or "matches no file" in p for p in problems), problems


def test_an_evaluation_config_that_is_a_folder_or_not_text_is_named(tmp_path):
    """The evaluation config is read as the run config is: a folder or a file that is not UTF-8 gets a message."""
    with pytest.raises(EvalConfigError, match=r"is a folder; give the evaluation's \.toml file"):
        load_eval_config(tmp_path)
    (tmp_path / "latin1.toml").write_bytes(b"[model]\ncheckpoint = '\xe9'\n")
    with pytest.raises(EvalConfigError, match=r"cannot be read \("):
        load_eval_config(tmp_path / "latin1.toml")
    with pytest.raises(EvalConfigError, match="the file does not exist"):
        load_eval_config(tmp_path / "missing.toml")


@pytest.mark.parametrize("device", ["foo", "cuda:7"])
def test_a_device_this_machine_lacks_is_one_message(workspace, capsys, device):
    assert evaluate.main(["--config", str(workspace / "eval.toml"), "--check", "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.startswith("[VMix] --device") and "Traceback" not in err
