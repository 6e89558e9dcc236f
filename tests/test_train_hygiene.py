"""Training hygiene, against the formulas: the learning-rate schedule, gradient clipping, the EMA (and the adapter
holding it), snapshot retention, the save dtype, TensorBoard events and the sample-prompts file."""

from __future__ import annotations

import dataclasses
import math
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tiny_checkpoint import TINY_OPTIONS, TinyLdmModel, tiny_trainer, write_dataset, write_tokenizer

import vmix_train.loop as loop_module
from vmix_ext.weights import load_adapter
from vmix_train.config import ConfigError
from vmix_train.ema import ema_decay
from vmix_train.events import EventLog
from vmix_train.prompts import read_sample_prompts
from vmix_train.schedule import lr_factor
from vmix_train.state import STATE_FILE, load_state

SIZES = [(16, 16), (24, 8), (20, 16), (8, 24), (16, 16), (30, 10)]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("hygiene")
    return TinyLdmModel().save(root / "tiny.safetensors"), write_tokenizer(root / "tokenizer")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("hygiene-data") / "data", SIZES, ["light", "color"])


def options(**changes):
    return dataclasses.replace(TINY_OPTIONS, **changes)


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_the_learning_rate_schedule_follows_its_formula(schedule):
    total, warmup = 10, 3
    for step in range(total):
        if step < warmup:
            expected = (step + 1) / warmup
        else:
            p = (step - warmup) / (total - warmup)
            expected = {"constant": 1.0, "linear": 1 - p, "cosine": (1 + math.cos(math.pi * p)) / 2}[schedule]
        assert lr_factor(step, total, warmup, schedule) == pytest.approx(expected, abs=1e-12)
    assert lr_factor(0, total, 0, schedule) == 1.0  # no warm-up: the full rate at once


def test_the_trainer_steps_at_the_scheduled_rate_and_clips_to_max_grad_norm(model, data, tmp_path):
    trainer = tiny_trainer(
        model, data, tmp_path, options(steps=5, lr_scheduler="cosine", lr_warmup_steps=2, max_grad_norm=1e-4)
    )
    used = []
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        used.append(
            (trainer.optimizer.param_groups[0]["lr"], {n: p.grad.clone() for n, p in trainer.trainable.items()})
        )
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    for number in range(5):
        trainer.accumulate_gradients()
        raw = {n: p.grad.clone() for n, p in trainer.trainable.items()}
        trainer.apply_gradients(0.0)
        lr, clipped = used[-1]
        assert lr == pytest.approx(1e-3 * lr_factor(number, 5, 2, "cosine"), rel=1e-12)
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in raw.values()))
        assert trainer.last_grad_norm == pytest.approx(float(norm), rel=1e-4)  # float32 sums
        factor = min(1.0, 1e-4 / (trainer.last_grad_norm + 1e-6))  # g·min(1, c / (‖g‖ + 1e-6))
        assert factor < 1  # the limit is below the gradients' norm: they were scaled down
        for name, g in raw.items():
            torch.testing.assert_close(clipped[name], g * factor, rtol=1e-5, atol=1e-12, msg=name)


def test_the_ema_follows_its_formula_and_becomes_the_adapter(model, data, tmp_path):
    trainer = tiny_trainer(model, data, tmp_path, options(steps=4, ema_decay=0.9, save_every=2, save_dtype="fp32"))
    expected = {n: p.detach().clone() for n, p in trainer.trainable.items()}
    updates = 0

    def follow(_step):
        nonlocal updates
        d = ema_decay(0.9, updates)  # min(0.9, (1 + n) / (10 + n)): 0.1, 0.1818, …
        for name, p in trainer.trainable.items():
            expected[name] = d * expected[name] + (1 - d) * p.detach()
        updates += 1

    trainer.on_step = follow
    trainer.run()
    assert ema_decay(0.9, 0) == pytest.approx(0.1) and ema_decay(0.9, 100) == 0.9
    for name, value in expected.items():
        torch.testing.assert_close(trainer.ema.shadow[name], value, rtol=1e-6, atol=1e-9, msg=name)
    raw = trainer.adapter.zero_proj.weight.detach()
    assert not torch.equal(raw, trainer.ema.shadow["adapter.zero_proj.weight"])  # the module keeps its own weights
    saved = load_adapter(trainer.adapter_path)
    torch.testing.assert_close(saved.zero_proj.weight, expected["adapter.zero_proj.weight"], rtol=1e-6, atol=1e-9)
    state = load_state(tmp_path / STATE_FILE)
    assert state.ema_updates == 4 and torch.equal(
        state.ema["adapter.zero_proj.weight"], trainer.ema.shadow["adapter.zero_proj.weight"].cpu()
    )
    assert torch.equal(state.weights["adapter.zero_proj.weight"], raw)  # the state keeps the trained weights


def test_retention_keeps_the_last_snapshots_and_files_are_saved_in_fp16(model, data, tmp_path):
    out = tmp_path / "out"
    trainer = tiny_trainer(model, data, out, options(steps=4, save_every=1, keep_snapshots=2, lora_rank=2))
    trainer.run()
    names = sorted(p.name for p in out.glob("*step*.safetensors"))
    assert names == [
        "out-lora-step000003.safetensors",
        "out-lora-step000004.safetensors",
        "out-step000003.safetensors",
        "out-step000004.safetensors",
    ]
    # fp16 by default for the files users get; the training state keeps float32.
    adapter = load_file(str(trainer.adapter_path))
    assert {t.dtype for t in adapter.values()} == {torch.float16}
    torch.testing.assert_close(
        adapter["proj.zero.weight"], trainer.adapter.zero_proj.weight.detach().half(), rtol=0, atol=0
    )
    lora = load_file(str(trainer.lora_path))
    assert {t.dtype for k, t in lora.items() if k.endswith("weight")} == {torch.float16}  # alpha stays float32
    state = load_state(out / STATE_FILE)
    assert {t.dtype for t in state.weights.values()} == {torch.float32}
    bf16 = tiny_trainer(model, data, tmp_path / "bf16", options(steps=1, save_dtype="bf16"))
    assert {t.dtype for t in load_file(str(bf16.run())).values()} == {torch.bfloat16}


def test_tensorboard_events_hold_loss_rate_norm_and_the_sample_grid(model, data, tmp_path):
    pytest.importorskip("tensorboard")  # requirements-test.txt installs it; the trainer treats it as optional
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    prompts = tmp_path / "prompts.toml"
    prompts.write_text('[[prompt]]\ntext = "a dog"\nwidth = 24\nheight = 8\n')
    problems: list[str] = []
    parsed = read_sample_prompts(prompts, ["light", "color"], problems)
    trainer = tiny_trainer(
        model,
        data,
        tmp_path / "out",
        options(steps=3, lr_warmup_steps=2, sample_every=3, sample_steps=2),
        tensorboard=True,
        sample_prompts=parsed,
    )
    trainer.run()
    events = EventAccumulator(str(tmp_path / "out" / "logs"))
    events.Reload()
    loss = [(e.step, e.value) for e in events.Scalars("loss")]
    assert loss == [(s + 1, pytest.approx(v, rel=1e-6)) for s, v in enumerate(trainer.losses)]
    rates = [e.value for e in events.Scalars("learning_rate")]
    assert rates == pytest.approx([1e-3 * lr_factor(s, 3, 2, "constant") for s in range(3)], rel=1e-6)
    assert all(e.value > 0 for e in events.Scalars("grad_norm"))
    (image,) = events.Images("samples (VMix off | on)")
    assert image.step == 3 and (image.width, image.height) == (24 + 2 + 24, 8)  # VMix off | on at 24x8


def test_tensorboard_missing_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"tensorboard = true needs the tensorboard package: pip install tensorboard"):
        EventLog(tmp_path)


def test_sample_prompts_choose_dimensions_sizes_seeds_and_negatives(model, data, tmp_path, monkeypatch):
    path = tmp_path / "prompts.toml"
    path.write_text(
        """
[[prompt]]
text = "a dog in the sun"
dimensions = ["light"]

[[prompt]]
text = "a dog"
dimensions = {color = 0.5}
negative = "blurry"
seed = 18446744073709551615
width = 24
height = 8
"""
    )
    problems: list[str] = []
    prompts = read_sample_prompts(path, ["light", "color"], problems)
    assert not problems
    assert [(p.strengths, p.seed, p.negative, p.width, p.height) for p in prompts] == [
        ((1.0, 0.0), 0, "", None, None),
        ((0.0, 0.5), 2**64 - 1, "blurry", 24, 8),
    ]
    calls = []
    real_sample = loop_module.sample

    def recording_sample(base, texts, seeds, **kwargs):
        calls.append((list(texts), list(seeds), kwargs.get("strengths"), kwargs["size"], kwargs["negative_prompt"]))
        return real_sample(base, texts, seeds, **kwargs)

    monkeypatch.setattr(loop_module, "sample", recording_sample)
    trainer = tiny_trainer(model, data, tmp_path / "out", options(steps=1, sample_steps=2), sample_prompts=prompts)
    sheet = trainer.save_samples()
    assert calls == [
        (["a dog in the sun"], [0], None, (16, 16), ""),  # VMix off
        (["a dog in the sun"], [0], (1.0, 0.0), (16, 16), ""),  # on, with its dimensions
        (["a dog"], [2**64 - 1], None, (24, 8), "blurry"),
        (["a dog"], [2**64 - 1], (0.0, 0.5), (24, 8), "blurry"),
    ]
    with Image.open(sheet) as grid:
        assert grid.size == (24 + 2 + 24, 16 + 2 + 8)  # rows of their own sizes


def test_a_bad_sample_prompts_file_lists_every_problem(tmp_path):
    path = tmp_path / "prompts.toml"
    path.write_text(
        """
[[prompt]]
text = ""
dimensions = ["mood"]
seed = -1
width = 20

[[prompt]]
text = "fine"
dimensions = {light = 2}
colour = "red"
"""
    )
    problems: list[str] = []
    read_sample_prompts(path, ["light", "color"], problems)
    expected = [
        "prompt 1: text must be a non-empty string",
        "prompt 1: unknown dimension name(s) ['mood']",
        "prompt 1: seed = -1 is out of range (a whole number from 0 to 18446744073709551615)",
        "prompt 1: width = 20 is out of range (a multiple of 8 from 8 to 8192)",
        "prompt 2: unknown key(s) ['colour']",
        "prompt 2: dimension light = 2 is out of range (a number from 0 to 1)",
    ]
    for words in expected:
        assert any(words in p for p in problems), (words, problems)
    assert len(problems) == len(expected)
    missing: list[str] = []
    read_sample_prompts(tmp_path / "none.toml", ["light"], missing)
    assert missing and "does not exist" in missing[0]
    assert issubclass(ConfigError, ValueError)
