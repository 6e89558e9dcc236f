"""The training loop: files written, the adapter file equal to the trained module, resume after a kill equal to an
uninterrupted run, accumulation and checkpointing that do not change the numbers, and clear refusals."""

from __future__ import annotations

import copy
import dataclasses
import json
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tiny_checkpoint import (
    DIMENSIONS_TOML,
    TINY_OPTIONS,
    TinyLdmModel,
    original_config,
    tiny_trainer,
    write_dataset,
    write_tokenizer,
)

import vmix_train.files as files_module
from vmix_ext.hooks import ValueMixer
from vmix_ext.mixing import MixOptions
from vmix_ext.weights import load_adapter, read_header
from vmix_train.checkpoint import load_single_file
from vmix_train.config import load_config
from vmix_train.dataset import load_dataset
from vmix_train.loop import Trainer, TrainingError
from vmix_train.lora import LoraSet, read_lora_file
from vmix_train.state import STATE_FILE, load_state

CONFIG = (
    """
[model]
checkpoint = "tiny.safetensors"
tokenizer = "tokenizer"

[data]
folder = "data"

[output]
folder = "out"
name = "tiny-vmix"

"""
    + DIMENSIONS_TOML
    + """
[train]
steps = 6
batch_size = 2
resolution = 16
bucket_step = 8  # the tiny model's images are 16 px; real runs keep 64
bucket_max_aspect = 3.0
learning_rate = 1e-3
save_every = 2
sample_every = 3
sample_count = 2
sample_steps = 2
"""
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    TinyLdmModel().save(root / "tiny.safetensors")
    write_tokenizer(root / "tokenizer")
    data = root / "data"
    data.mkdir()
    lines = []
    for i in range(6):
        Image.new("RGB", (20, 16), (40 * i, 200 - 30 * i, 90)).save(data / f"{i}.png")
        labels = {"color": i % 2 == 0, "lighting": i > 2}
        lines.append(json.dumps({"file_name": f"{i}.png", "caption": f"a cat number {i}", "labels": labels}))
    (data / "metadata.jsonl").write_text("\n".join(lines))
    return root


def make_trainer(workspace, tmp_path, **train_overrides):
    text = CONFIG.replace('folder = "out"', f'folder = "{(tmp_path / "out").as_posix()}"')
    config_path = workspace / f"run-{tmp_path.name}.toml"
    config_path.write_text(text)
    config = load_config(config_path)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, **train_overrides))
    examples = load_dataset(config.dataset, [d.name for d in config.dimensions])
    base = load_single_file(config.checkpoint, original_config=original_config(), tokenizer=config.tokenizer)
    return Trainer(config, base, examples, device="cpu", progress=False, log=lambda _: None)


def adapter_tensors(trainer):
    return {k: v.detach().clone() for k, v in trainer.adapter.state_dict().items()}


def test_a_run_writes_the_adapter_snapshots_samples_and_loss_curve(workspace, tmp_path):
    trainer = make_trainer(workspace, tmp_path)
    path = trainer.run()
    out = tmp_path / "out"
    assert path == out / "tiny-vmix.safetensors"
    names = {p.name for p in out.iterdir()}
    assert {"tiny-vmix-step000002.safetensors", "tiny-vmix-step000006.safetensors", STATE_FILE, "loss.png"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    samples = sorted(p.name for p in (out / "samples").iterdir())
    assert samples == ["step-000003.png", "step-000006.png"]
    with Image.open(out / "samples" / "step-000006.png") as grid:
        assert grid.size == (2 * 16 + 2, 2 * 16 + 2)  # two rows (captions) by two columns (VMix off, on)
    header = read_header(path)
    assert header.training["steps"] == 6
    assert header.training["base_checkpoint"] == "tiny.safetensors"
    assert len(header.training["base_hash"]) == 10
    assert [d.name for d in header.dimensions] == ["color", "lighting"]
    assert len(trainer.losses) == 6 and all(torch.isfinite(torch.tensor(trainer.losses)))
    assert float(trainer.adapter.zero_proj.weight.detach().abs().max()) > 0  # it learned something


def test_the_adapter_file_gives_the_same_outputs_as_the_trained_module(workspace, tmp_path):
    trainer = make_trainer(workspace, tmp_path, steps=3, sample_count=0, save_dtype="fp32")
    loaded = load_adapter(trainer.run())
    unet = trainer.base.unet
    generator = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([100, 800])
    context = torch.randn(2, 77, 768, generator=generator)
    outputs = []
    for adapter in (trainer.adapter, loaded):
        values = {k: v.detach() for k, v in adapter.aesthetic_values({"color": 1.0, "lighting": 0.5}).items()}
        with torch.no_grad(), ValueMixer(values, MixOptions(scale=1.3)) as mixer:
            mixer.attach(unet)
            outputs.append(unet(x, t, encoder_hidden_states=context).sample)
    assert torch.equal(outputs[0], outputs[1])


class Killed(Exception):
    pass


def assert_resume_is_exact(make) -> Trainer:
    """``make(folder)`` builds a trainer writing to ``folder``: a run killed after step 5 (its last checkpoint at
    step 4) and resumed ends exactly as a run never stopped: losses, weights, optimizer state and EMA."""
    straight = make("a")
    straight.run()

    killed = make("b")
    saved_optimizer = {}

    def kill_after_step_5(step):
        if step == 4:  # just saved (save_every = 2): remember what the file should hold
            saved_optimizer.update(copy.deepcopy(killed.optimizer.state_dict()))
        if step == 5:
            raise Killed

    killed.on_step = kill_after_step_5
    with pytest.raises(Killed):
        killed.run()
    assert load_state(killed.output_dir / STATE_FILE).step == 4

    resumed = make("b")
    assert resumed.resume() and resumed.step == 4
    restored = resumed.optimizer.state_dict()
    for index, slots in saved_optimizer["state"].items():
        for slot, value in slots.items():
            assert torch.equal(restored["state"][index][slot], value), (index, slot)
    assert restored["param_groups"] == saved_optimizer["param_groups"]
    resumed.run()
    assert resumed.losses == straight.losses
    for name, value in straight.trainable.items():
        assert torch.equal(resumed.trainable[name], value), name
    if straight.ema is not None:
        for name, value in straight.ema.shadow.items():
            assert torch.equal(resumed.ema.shadow[name], value), name
    files = load_file(str(resumed.adapter_path)), load_file(str(straight.adapter_path))
    assert files[0].keys() == files[1].keys() and all(torch.equal(files[0][k], files[1][k]) for k in files[1])
    return straight


@pytest.mark.parametrize("lora_rank", [0, 2])
def test_resume_after_a_kill_continues_exactly(workspace, tmp_path, lora_rank):
    def make(name):
        return make_trainer(workspace, tmp_path / name, sample_count=0, lora_rank=lora_rank)

    assert len(assert_resume_is_exact(make).trainable) > (13 if lora_rank else 12)


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "decoded-each-step"])
def test_resume_is_exact_with_buckets_caches_workers_and_ema(tmp_path, cache):
    """Mixed aspect ratios in three buckets, two DataLoader workers (decoding for the cache, or for every step
    without it), an EMA, a learning-rate schedule with warm-up, clipping and caption dropout."""
    model = (TinyLdmModel().save(tmp_path / "tiny.safetensors"), write_tokenizer(tmp_path / "tokenizer"))
    sizes = [(16, 16), (24, 8), (20, 16), (8, 24), (16, 16), (30, 10), (10, 30), (17, 15)]
    data = write_dataset(tmp_path / "data", sizes, ["light", "color"])
    options = dataclasses.replace(
        TINY_OPTIONS,
        steps=6,
        save_every=2,
        cache=cache,
        num_workers=2,
        ema_decay=0.9,
        lr_scheduler="cosine",
        lr_warmup_steps=2,
        max_grad_norm=0.01,
        caption_dropout=0.3,
    )

    def make(name):
        return tiny_trainer(model, data, tmp_path / name, options)

    assert_resume_is_exact(make)


def test_a_kill_while_saving_keeps_the_previous_state(workspace, tmp_path, monkeypatch):
    trainer = make_trainer(workspace, tmp_path, steps=2, sample_count=0)
    trainer.run()
    state_path = tmp_path / "out" / STATE_FILE
    before = state_path.read_bytes()

    def die(*_args):
        raise Killed  # the temporary file is written, the rename never happens

    monkeypatch.setattr(files_module.os, "replace", die)
    trainer.step = 3
    with pytest.raises(Killed):
        trainer.save_checkpoint()
    assert state_path.read_bytes() == before
    assert load_state(state_path).step == 2


def test_a_state_from_another_run_is_refused(workspace, tmp_path):
    make_trainer(workspace, tmp_path, steps=2, sample_count=0).run()
    other = make_trainer(workspace, tmp_path, steps=4, sample_count=0, batch_size=3)
    with pytest.raises(TrainingError, match=r"different run \(global_batch: 2 in the saved run, 3 now\)"):
        other.run()


def gradients(trainer):
    loss = trainer.accumulate_gradients()
    return loss, {name: p.grad.clone() for name, p in trainer.trainable.items()}


def assert_same_gradients(got, expected):
    # Some gradients are zero in exact arithmetic (F's bias: the LayerNorm over d removes it) and float noise
    # elsewhere, so the absolute tolerance is relative to the largest gradient.
    scale = max(float(g.abs().max()) for g in expected.values())
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=1e-5 * scale, rtol=1e-4, msg=name)


def assert_same_training(reference, other):
    """Two steps side by side (the zero start, then one with Z non-zero so that every parameter has a gradient):
    the same losses and gradients at each."""
    for _ in range(2):
        (ref_loss, ref_grads), (other_loss, other_grads) = gradients(reference), gradients(other)
        assert other_loss == pytest.approx(ref_loss, rel=1e-6)
        assert_same_gradients(other_grads, ref_grads)
        reference.apply_gradients(ref_loss)
        other.apply_gradients(other_loss)
    assert float(ref_grads["adapter.value_projs.0.weight"].abs().max()) > 0


def test_gradient_accumulation_matches_one_big_batch(workspace, tmp_path):
    big = make_trainer(workspace, tmp_path / "big", batch_size=4, sample_count=0)
    accumulated = make_trainer(workspace, tmp_path / "acc", batch_size=2, gradient_accumulation=2, sample_count=0)
    assert_same_training(big, accumulated)


def test_gradient_checkpointing_gives_the_same_gradients(workspace, tmp_path):
    """Checkpointing recomputes the UNet in backward; V_a reaches it through hooks, not inputs, so the non-reentrant
    variant is needed for W_Va, F and Z to get their gradients at all."""
    plain = make_trainer(workspace, tmp_path / "plain", sample_count=0)
    checkpointed = make_trainer(workspace, tmp_path / "ckpt", sample_count=0, gradient_checkpointing=True)
    assert checkpointed.base.unet.is_gradient_checkpointing and not plain.base.unet.is_gradient_checkpointing
    assert_same_training(plain, checkpointed)


def test_bf16_mixed_precision_trains_fp32_weights(workspace, tmp_path):
    trainer = make_trainer(workspace, tmp_path, steps=2, sample_count=1, sample_every=2, mixed_precision="bf16")
    path = trainer.run()
    assert trainer.base.unet.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in trainer.trainable.values())
    assert all(torch.isfinite(torch.tensor(trainer.losses)))
    assert read_header(path).training["steps"] == 2


def test_fp16_without_a_gpu_is_refused(workspace, tmp_path):
    with pytest.raises(TrainingError, match='"fp16" needs a CUDA GPU; use "bf16"'):
        make_trainer(workspace, tmp_path, mixed_precision="fp16")


def test_caption_dropout_empties_that_share_of_captions(workspace, tmp_path):
    trainer = make_trainer(workspace, tmp_path, caption_dropout=0.5, batch_size=6)
    seen: list[str] = []
    texts = trainer.data.texts
    trainer.data.texts = lambda captions: (seen.extend(captions), texts(captions))[1]
    for step in range(20):
        trainer.batch(step, 0)
    empty = seen.count("")
    assert 0.35 < empty / len(seen) < 0.65
    again: list[str] = []
    trainer.data.texts = lambda captions: (again.extend(captions), texts(captions))[1]
    for step in range(20):
        trainer.batch(step, 0)
    assert again == seen  # the same positions drop the same captions, so a resumed run sees the same data


def test_a_lora_is_trained_alongside_and_saved_as_a_standard_lora_file(workspace, tmp_path):
    trainer = make_trainer(workspace, tmp_path, steps=2, save_every=1, sample_count=0, lora_rank=2)
    trainer.run()
    out = tmp_path / "out"
    assert {"tiny-vmix-lora.safetensors", "tiny-vmix-lora-step000001.safetensors"} <= {p.name for p in out.iterdir()}
    assert trainer.lora is not None and trainer.lora.attached_unet is None  # the hooks are gone after the run
    loaded = LoraSet.load(out / "tiny-vmix-lora.safetensors", trainer.base.unet)
    for name, pair in trainer.lora.pairs().items():
        assert float(pair.lora_up.weight.detach().abs().max()) > 0, name  # up starts at zero: it has learned
        torch.testing.assert_close(loaded.pair(name).lora_up.weight, pair.lora_up.weight.detach().half().float())
    _, metadata = read_lora_file(out / "tiny-vmix-lora.safetensors")
    assert metadata["ss_network_module"] == "networks.lora" and metadata["ss_network_dim"] == "2"
    assert metadata["vmix_adapter"] == "tiny-vmix.safetensors"


def test_the_8bit_optimizer_without_bitsandbytes_says_what_to_install(workspace, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if it were not installed
    with pytest.raises(TrainingError, match=r'"adamw8bit" needs the bitsandbytes package \(pip install bitsandbytes\)'):
        make_trainer(workspace, tmp_path, optimizer="adamw8bit")
