"""The training run's configuration: a TOML file, checked in full before anything is loaded."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10, as A1111 ships: the same parser from PyPI (requirements-train.txt)
    import tomli as tomllib

from vmix_ext.adapter import Dimension
from vmix_train.prompts import SamplePrompt, read_sample_prompts
from vmix_train.schedule import SCHEDULES
from vmix_train.streams import MAX_SEED, SEED_RANGE

MIXED_PRECISION = ("no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adamw8bit")
SAVE_DTYPES = ("fp16", "bf16", "fp32")
MAX_SIDE = 8192  # pixels: the largest resolution or bucket side a config may ask for


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file, every bad key and what it accepts."""

    def __init__(self, path: str | Path, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"training config '{path}' has {len(problems)} problem(s):\n{listing}")


# The paper's learning rates: 1e-4 for SD 1.5 and 1e-5 for SDXL; SD 2.x (not in the paper) takes SD 1.5's.
FAMILY_LEARNING_RATE = {"sd1": 1e-4, "sd2": 1e-4, "sdxl": 1e-5}


def native_resolution(family: str, prediction_type: str) -> int:
    """The image size a family's base models were trained at: 512 for SD 1.x and SD 2.x 512-base, 768 for SD 2.x's
    v-prediction models, 1024 for SDXL."""
    if family == "sdxl":
        return 1024
    if family == "sd2" and prediction_type == "v_prediction":
        return 768
    return 512


@dataclass(frozen=True)
class TrainingOptions:
    """[train]: the paper used batch 256 and 50k steps; these defaults fit one consumer GPU. ``learning_rate``,
    ``resolution`` and the bucket sides 0 mean the model family's values (``for_model``)."""

    steps: int = 2000
    batch_size: int = 4
    gradient_accumulation: int = 1
    global_batch_size: int = 0  # images per optimizer step over all processes; 0 = batch × accumulation × processes
    learning_rate: float = 0.0  # 0 = the paper's rate for the family: 1e-4 (SD 1.x, SD 2.x), 1e-5 (SDXL)
    lr_scheduler: str = "constant"  # after the warm-up: "constant", "linear" or "cosine" (to 0 at the last step)
    lr_warmup_steps: int = 0  # the rate rises linearly over this many steps
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0  # gradients clipped to this total L2 norm; 0 = no clipping
    ema_decay: float = 0.0  # > 0: keep an EMA of the trained weights (e.g. 0.999) and save it as the adapter
    optimizer: str = "adamw"  # or "adamw8bit": bitsandbytes' 8-bit AdamW (pip install bitsandbytes; CUDA)
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    caption_dropout: float = 0.0
    lora_rank: int = 0  # 0 = no LoRA
    seed: int = 0  # any whole number from 0 to 2**64 - 1
    save_every: int = 500
    keep_snapshots: int = 0  # keep only the last N adapter (and LoRA) snapshots; 0 = keep all
    save_dtype: str = "fp16"  # the adapter and LoRA files' dtype; the training state stays float32
    sample_every: int = 500
    resolution: int = 0  # the pixel area is resolution²; 0 = the family's native size
    buckets: bool = True  # aspect-ratio buckets; false = every image centre-cropped to a resolution square
    bucket_step: int = 64  # bucket sides are multiples of this
    bucket_min_side: int = 0  # 0 = half the resolution
    bucket_max_side: int = 0  # 0 = twice the resolution
    bucket_max_aspect: float = 2.0  # the longest bucket side / its shortest
    cache: bool = True  # keep latents and text-encoder outputs on disk ([data] cache_folder)
    num_workers: int = 2  # DataLoader processes decoding images; 0 = decode in the training process
    sample_count: int = 4  # sample grids use the first N captions of the dataset, seeds 0..N-1
    sample_steps: int = 25  # DDIM steps, as in the paper's evaluation
    sample_guidance: float = 7.5  # CFG scale, as in the paper's evaluation

    def for_model(self, family: str, prediction_type: str) -> TrainingOptions:
        """These options with ``learning_rate``, ``resolution`` and the bucket sides 0 replaced by the family's
        values (the sides derived from the resolution: half and twice it, in bucket steps)."""
        resolution = self.resolution or native_resolution(family, prediction_type)
        step = self.bucket_step
        return replace(
            self,
            learning_rate=self.learning_rate or FAMILY_LEARNING_RATE.get(family, FAMILY_LEARNING_RATE["sd1"]),
            resolution=resolution,
            bucket_min_side=self.bucket_min_side or max(step, resolution // 2 // step * step),
            bucket_max_side=self.bucket_max_side or resolution * 2,
        )


# [train] keys and what they accept: a test and the words for the message.
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "steps": (lambda v: v >= 1, "a whole number ≥ 1"),
    "batch_size": (lambda v: v >= 1, "a whole number ≥ 1"),
    "gradient_accumulation": (lambda v: v >= 1, "a whole number ≥ 1"),
    "global_batch_size": (lambda v: v >= 0, "0, or a whole number ≥ 1"),
    "learning_rate": (lambda v: 0 <= v < 1, "a number from 0 (the family's rate) to below 1"),
    "lr_scheduler": (lambda v: v in SCHEDULES, f"one of {SCHEDULES}"),
    "lr_warmup_steps": (lambda v: v >= 0, "a whole number ≥ 0"),
    "adam_beta1": (lambda v: 0 <= v < 1, "a number from 0 to below 1"),
    "adam_beta2": (lambda v: 0 <= v < 1, "a number from 0 to below 1"),
    "adam_epsilon": (lambda v: 0 < v < 1, "a number above 0 and below 1"),
    "weight_decay": (lambda v: 0 <= v < 1e3, "a number from 0 to below 1000"),
    "max_grad_norm": (lambda v: v >= 0, "0 (no clipping), or a number above 0"),
    "ema_decay": (lambda v: 0 <= v < 1, "0 (no EMA), or a number above 0 and below 1, e.g. 0.999"),
    "mixed_precision": (lambda v: v in MIXED_PRECISION, f"one of {MIXED_PRECISION}"),
    "optimizer": (lambda v: v in OPTIMIZERS, f"one of {OPTIMIZERS}"),
    "caption_dropout": (lambda v: 0 <= v < 1, "a number from 0 to below 1"),
    "lora_rank": (lambda v: v >= 0, "0 (no LoRA), or a whole number ≥ 1"),
    "seed": (lambda v: 0 <= v <= MAX_SEED, SEED_RANGE),
    "save_every": (lambda v: v >= 1, "a whole number ≥ 1"),
    "keep_snapshots": (lambda v: v >= 0, "0 (keep all), or a whole number ≥ 1"),
    "save_dtype": (lambda v: v in SAVE_DTYPES, f"one of {SAVE_DTYPES}"),
    "sample_every": (lambda v: v >= 1, "a whole number ≥ 1"),
    "resolution": (
        lambda v: v == 0 or (8 <= v <= MAX_SIDE and v % 8 == 0),
        f"0 (the family's size), or a multiple of 8 from 8 to {MAX_SIDE}",
    ),
    "bucket_step": (lambda v: 8 <= v <= MAX_SIDE and v % 8 == 0, f"a multiple of 8 from 8 to {MAX_SIDE}"),
    "bucket_min_side": (lambda v: 0 <= v <= MAX_SIDE, f"0 (half the resolution), or a side up to {MAX_SIDE}"),
    "bucket_max_side": (lambda v: 0 <= v <= MAX_SIDE, f"0 (twice the resolution), or a side up to {MAX_SIDE}"),
    "bucket_max_aspect": (lambda v: 1 <= v <= 16, "a number from 1 to 16"),
    "num_workers": (lambda v: 0 <= v <= 256, "a whole number from 0 to 256"),
    "sample_count": (lambda v: v >= 0, "a whole number ≥ 0"),
    "sample_steps": (lambda v: 1 <= v <= 1000, "a whole number from 1 to 1000"),
    "sample_guidance": (lambda v: 1 <= v <= 100, "a number from 1 to 100"),
}


@dataclass(frozen=True)
class RunConfig:
    checkpoint: Path
    dataset: Path
    output_dir: Path
    dimensions: tuple[Dimension, ...]
    train: TrainingOptions = field(default_factory=TrainingOptions)
    original_config: Path | None = None  # [model] config: the ldm YAML; SD 1.x's values when omitted
    tokenizer: Path | None = None  # [model] tokenizer: a CLIP tokenizer folder; the HF cache when omitted
    clip_skip: int = 1  # [model] clip_skip, as set in the WebUI the adapter will be used with
    prediction: str | None = None  # [model] prediction: "epsilon" or "v"; SD 2.x needs it unless a config is given
    name: str = ""  # [output] name: the adapter's file name (without .safetensors); the folder's name when empty
    cache_folder: Path | None = None  # [data] cache_folder: where the caches go; <dataset>/vmix-cache when None
    sample_prompts: tuple[SamplePrompt, ...] | None = None  # [data] sample_prompts, parsed; None = the captions
    tensorboard: bool = False  # [output] tensorboard: event files in <output>/logs

    @property
    def adapter_name(self) -> str:
        return self.name or self.output_dir.name


def read_toml(path: Path, fail: Callable[[str], Exception], expected: str) -> dict[str, Any]:
    """A config file's TOML, or ``fail(problem)`` raised with what is wrong with the file itself (``expected`` says
    what to give instead of a folder). The run config and the evaluation config are read alike."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problem = "the file does not exist"
    except IsADirectoryError:
        problem = f"is a folder; give {expected}"
    except (OSError, UnicodeDecodeError) as exc:
        problem = f"cannot be read ({exc})"
    except tomllib.TOMLDecodeError as exc:
        problem = f"not valid TOML: {exc}"
    raise fail(problem)


def load_config(path: str | Path) -> RunConfig:
    """Read and check a run config; every problem is reported at once, relative paths resolve against the file."""
    path = Path(path)
    raw = read_toml(path, lambda problem: ConfigError(path, [problem]), "the run's .toml file")
    problems: list[str] = []
    base = path.parent
    for section in ("model", "data", "output", "train", "label"):
        if not isinstance(raw.get(section, {}), dict):
            problems.append(f"[{section}] must be a table")
            raw[section] = {}

    def location(section: str, key: str) -> Path | None:
        value = raw.get(section, {}).get(key)
        if not isinstance(value, str) or not value:
            problems.append(f"[{section}] {key} must be a path (text)")
            return None
        return (base / value).resolve()

    def optional_location(section: str, key: str) -> Path | None:
        if key not in raw.get(section, {}):
            return None
        return location(section, key)

    checkpoint = location("model", "checkpoint")
    original_config = optional_location("model", "config")
    tokenizer = optional_location("model", "tokenizer")
    dataset = location("data", "folder")
    cache_folder = optional_location("data", "cache_folder")
    prompts_path = optional_location("data", "sample_prompts")
    output_dir = location("output", "folder")
    for label, value in (
        ("[model] checkpoint", checkpoint),
        ("[model] config", original_config),
        ("[model] tokenizer", tokenizer),
        ("[data] folder", dataset),
        ("[data] sample_prompts", prompts_path),
    ):
        if value is not None and not value.exists():
            problems.append(f"{label} {value} does not exist")
    if dataset is not None and dataset.exists() and not dataset.is_dir():
        problems.append(f"[data] folder {dataset} is a file, not a folder")
    clip_skip = raw.get("model", {}).get("clip_skip", 1)
    if type(clip_skip) is not int or not 1 <= clip_skip <= 12:
        problems.append(f"[model] clip_skip must be a whole number from 1 to 12, got {clip_skip!r}")
    prediction = raw.get("model", {}).get("prediction")
    if prediction is not None and prediction not in ("epsilon", "v"):
        problems.append(f'[model] prediction must be "epsilon" or "v", got {prediction!r}')
    name = raw.get("output", {}).get("name", "")
    if not isinstance(name, str) or any(c in name for c in '/\\:*?"<>|'):
        problems.append(f"[output] name must be a plain file name (no folders), got {name!r}")
    tensorboard = raw.get("output", {}).get("tensorboard", False)
    if type(tensorboard) is not bool:
        problems.append(f"[output] tensorboard must be true or false, got {tensorboard!r}")
    if output_dir is not None and output_dir.exists() and not output_dir.is_dir():
        problems.append(f"[output] folder {output_dir} is a file, not a folder")
    if cache_folder is not None and cache_folder.exists() and not cache_folder.is_dir():
        problems.append(f"[data] cache_folder {cache_folder} is a file, not a folder")
    for section, allowed in (
        ("model", {"checkpoint", "config", "tokenizer", "clip_skip", "prediction"}),
        ("data", {"folder", "cache_folder", "sample_prompts"}),
        ("output", {"folder", "name", "tensorboard"}),
    ):
        extra = sorted(set(raw.get(section, {})) - allowed)
        if extra:
            problems.append(f"[{section}] unknown key(s) {extra}; known: {', '.join(sorted(allowed))}")
    dimensions = _dimensions(raw.get("dimensions"), problems)
    train = _training_options(raw.get("train", {}), problems)
    sample_prompts = None
    if prompts_path is not None and prompts_path.exists():
        sample_prompts = read_sample_prompts(prompts_path, [d.name for d in dimensions], problems)
    # [label] belongs to the labelling command (python -m vmix_train.label), which reads the same file.
    unknown = sorted(set(raw) - {"model", "data", "output", "dimensions", "train", "label"})
    if unknown:
        problems.append(f"unknown section(s) {unknown}")
    if problems:
        raise ConfigError(path, problems)
    assert checkpoint and dataset and output_dir and train
    return RunConfig(
        checkpoint,
        dataset,
        output_dir,
        dimensions,
        train,
        original_config,
        tokenizer,
        clip_skip,
        prediction,
        name.strip(),
        cache_folder,
        sample_prompts,
        tensorboard is True,
    )


def _dimensions(items: Any, problems: list[str]) -> tuple[Dimension, ...]:
    if not isinstance(items, list) or not items:
        problems.append("[[dimensions]] is missing: add one table per dimension with name, positive and negative")
        return ()
    dims: list[Dimension] = []
    for n, item in enumerate(items, 1):
        keys = ("name", "positive", "negative")
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in keys):
            problems.append(f"dimension {n} needs text values for name, positive and negative")
            continue
        try:
            dims.append(Dimension(item["name"], item["positive"], item["negative"]))
        except ValueError as exc:
            problems.append(f"dimension {n}: {exc}")
    names = [d.name for d in dims]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        problems.append(f"dimension names must be unique, repeated: {duplicates}")
    negatives = [d.negative for d in dims]
    if len(set(negatives)) != len(negatives):
        problems.append("each dimension needs its own negative identifier")
    return tuple(dims)


def _training_options(section: dict[str, Any], problems: list[str]) -> TrainingOptions | None:
    known = {f.name: f for f in fields(TrainingOptions)}
    unknown = sorted(set(section) - set(known))
    if unknown:
        problems.append(f"[train] unknown key(s) {unknown}; known: {', '.join(known)}")
    values: dict[str, Any] = {}
    defaults = TrainingOptions()
    for name in known:
        if name not in section:
            continue
        value, expected = section[name], type(getattr(defaults, name))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not expected:
            problems.append(f"[train] {name} must be {expected.__name__}, got {value!r}")
            continue
        values[name] = value
    for name, (ok, accepted) in _CHECKS.items():
        if name not in values:
            continue
        value = values[name]
        if (isinstance(value, float) and not math.isfinite(value)) or not ok(value):
            problems.append(f"[train] {name} = {value!r} is out of range (allowed: {accepted})")
            del values[name]
    try:
        return TrainingOptions(**values)
    except TypeError:
        return None
