"""Two processes (torchrun, gloo on CPU) train the same adapter as one process with the same global batch, and a
two-process run killed mid-way resumes to the same result; with images of mixed aspect ratios in three buckets, the
latent and text caches (filled by both processes together in one run) and DataLoader workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from tiny_checkpoint import DIMENSIONS_TOML, TinyLdmModel, original_config, write_tokenizer

REPO = Path(__file__).resolve().parents[1]
RUN = (
    """
[model]
checkpoint = "../tiny.safetensors"
config = "../tiny.yaml"
tokenizer = "../tokenizer"

[data]
folder = "../data"
{cache}

[output]
folder = "out"
name = "run"

"""
    + DIMENSIONS_TOML
    + """
[train]
steps = {steps}
batch_size = {batch}
global_batch_size = 4
resolution = 16
bucket_step = 8
bucket_max_aspect = 3.0
num_workers = 1
learning_rate = 1e-3
# A larger epsilon than AdamW's 1e-8: gradients that are zero in exact arithmetic (F's bias, see the LayerNorm)
# come out as ±1e-9 float noise, which eps = 1e-8 would turn into full-size steps in either direction.
adam_epsilon = 1e-6
save_every = 1
save_dtype = "fp32"  # compared within float32 rounding; fp16 files would round those differences up
sample_count = 0
"""
)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    TinyLdmModel().save(root / "tiny.safetensors")
    (root / "tiny.yaml").write_text(yaml.safe_dump(original_config()))
    write_tokenizer(root / "tokenizer")
    data = root / "data"
    data.mkdir()
    lines = []
    sizes = [(16, 16), (24, 8), (8, 24), (20, 16), (30, 10), (16, 16), (10, 30), (18, 14), (24, 8), (16, 16)]
    for i, size in enumerate(sizes):  # three buckets: 8x24, 16x16, 24x8
        Image.new("RGB", size, (25 * i, 200 - 15 * i, 60 + 10 * i)).save(data / f"{i}.png")
        labels = {"color": i % 2 == 0, "lighting": i % 3 == 0}
        lines.append(json.dumps({"file_name": f"{i}.png", "caption": f"a cat {i}", "labels": labels}))
    (data / "metadata.jsonl").write_text("\n".join(lines))
    return root


def run_folder(shared: Path, name: str, steps: int, batch: int, own_cache: bool = False) -> Path:
    """``own_cache``: a cache folder of its own (filled by this run's processes), else the one next to the data."""
    folder = shared / name
    folder.mkdir()
    cache = 'cache_folder = "cache"' if own_cache else ""
    (folder / "run.toml").write_text(RUN.format(steps=steps, batch=batch, cache=cache))
    return folder


def command(folder: Path, processes: int) -> list[str]:
    train = ["-m", "vmix_train", "--config", str(folder / "run.toml"), "--device", "cpu", "--no-progress"]
    if processes == 1:
        return [sys.executable, *train]
    launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return [sys.executable, *launch, *train]


def environment() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    return env


def train(folder: Path, processes: int) -> dict[str, torch.Tensor]:
    result = subprocess.run(
        command(folder, processes), cwd=REPO, env=environment(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return load_file(str(folder / "out" / "run.safetensors"))


# F's bias cannot change the output (the LayerNorm over d removes any constant added to a token's row), so its
# gradient is zero up to float noise, which AdamW turns into steps of up to lr·|g|/(|g| + eps) ≈ 1e-6 that differ
# between 1 and 2 processes; over 12 steps they add up to about 1e-5.
NOISE_ONLY = {"proj.token.bias": 1e-4}


def assert_same_adapter(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=NOISE_ONLY.get(name, 2e-6), rtol=1e-4, msg=name)


@pytest.fixture(scope="module")
def one_process(shared):
    return train(run_folder(shared, "one", steps=3, batch=4), processes=1)


def test_two_processes_train_the_same_adapter_as_one(shared, one_process):
    folder = run_folder(shared, "two", steps=3, batch=2, own_cache=True)
    two = train(folder, processes=2)
    assert_same_adapter(two, one_process)
    assert len(list((folder / "cache").glob("latents-*.safetensors"))) == 2  # each process cached half
    assert float(one_process["proj.zero.weight"].abs().max()) > 1e-4  # it trained


def test_a_killed_two_process_run_resumes_to_the_same_adapter(shared):
    steps = 3 + 9  # 3 shared with the reference, then more so that the kill lands mid-run
    reference = train(run_folder(shared, "ref12", steps=steps, batch=4), processes=1)
    folder = run_folder(shared, "killed", steps=steps, batch=2)
    state = folder / "out" / "training-state.safetensors"
    process = subprocess.Popen(
        command(folder, 2),
        cwd=REPO,
        env=environment(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while saved_step(state) < 2:
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)  # every process of the run at once, as a lost machine would
    finally:
        process.wait(timeout=60)
    killed_at = saved_step(state)
    assert 2 <= killed_at < steps, killed_at
    resumed = train(folder, processes=2)
    assert_same_adapter(resumed, reference)


def saved_step(state: Path) -> int:
    try:
        with safe_open(str(state), "pt") as handle:
            return int((handle.metadata() or {}).get("step", 0))
    except Exception:  # not there yet, or replaced while being read (safetensors raises its own error types)
        return 0
