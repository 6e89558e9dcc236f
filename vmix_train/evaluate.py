"""python -m vmix_train.evaluate --config eval.toml: the paper's table and λ sweep for your own adapters.

The base model and every adapter × λ × dimension setting generate one image per prompt and seed (DDIM 25 steps,
CFG 7.5, no negative prompt by default, as in the paper's evaluation), with the same starting noise for the same
seed in every setting. Every image is scored (CLIP score with its prompt, LAION aesthetic score) and every setting's
images are compared with a reference folder (FID) when one is given. Outputs, in the output folder:

- ``results.md`` and ``results.csv``: one row per setting (base, then adapter × λ × dimensions) with FID, CLIP score
  and aesthetic score, each per-image score as mean ± standard error over prompts × seeds; ``scores.csv``: every
  image's scores.
- ``lambda-sweep.png``: aesthetic and CLIP score against λ (the paper's Fig. 7).
- ``grids/prompt-<n>.png``: for each of the first ``grid_prompts`` prompts, one row per setting, one column per seed.
- ``images/<setting>/``: every generated image, and ``setting.json`` describing how it was made. A second run of the
  same command generates only the images that are missing (resume); a folder made with other settings is refused.

λ = 0 is generated through the adapter's hooks like every other λ (once per adapter: the dimensions do not matter
when λ is 0), so its row is a check that VMix at λ = 0 is the base model: it must equal the base row exactly.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from vmix_ext.adapter import VMixAdapter
from vmix_ext.settings import SettingsError, VMixSettings, parse_dimensions
from vmix_ext.weights import AdapterFileError, check_adapter_fits, load_adapter, short_hash
from vmix_train.aesthetic import AestheticHead, AestheticHeadError, load_aesthetic_head
from vmix_train.checkpoint import CheckpointError, load_single_file
from vmix_train.clip_models import ClipModelError, ClipScorer, load_clip
from vmix_train.config import native_resolution
from vmix_train.evaluate_config import IMAGE_SUFFIXES, EvalConfig, EvalConfigError, load_eval_config
from vmix_train.evaluate_report import write_outputs
from vmix_train.inception import InceptionWeightsError, convert, load_inception
from vmix_train.local_weights import conversion_command
from vmix_train.metrics import (
    FrechetDistance,
    MetricError,
    Summary,
    aesthetic_scores,
    check_aesthetic_pair,
    clip_scores,
    require_torchmetrics,
    summarise,
)
from vmix_train.model import BaseModel
from vmix_train.preflight import UsageError, check_device
from vmix_train.sampling import sample, to_pil

PRECISION = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
METRIC_BATCH = 32
_USER_ERRORS = (
    EvalConfigError,
    CheckpointError,
    AdapterFileError,
    SettingsError,
    ClipModelError,
    AestheticHeadError,
    InceptionWeightsError,
    MetricError,
    UsageError,
)


class EvaluationError(RuntimeError):
    """An evaluation that cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class Setting:
    """One row of the table: the base model, or one adapter at one λ with one dimension setting."""

    key: str  # its folder below images/, also its id in the CSV files
    adapter: str = ""  # the adapter's file name without .safetensors; "" for the base model
    scale: float = 0.0
    dimensions: str = ""  # as the table shows it: all, none, only <name>, a web UI list, or "any" at λ = 0
    strengths: dict[str, float] | None = None
    path: Path | None = None

    @property
    def is_base(self) -> bool:
        return self.path is None


@dataclass
class MetricModels:
    clip: ClipScorer
    aesthetic_clip: ClipScorer | None = None  # CLIP ViT-L/14 for the aesthetic head (often the CLIP score's model)
    aesthetic_head: AestheticHead | None = None
    fid_features: nn.Module | None = None  # FID's Inception-v3 (or any uint8 image -> feature network)


@dataclass(frozen=True)
class Row:
    setting: Setting
    count: int
    clip: Summary
    aesthetic: Summary | None
    fid: float | None


@dataclass
class EvaluationResult:
    rows: list[Row]
    generated: int  # images made by this run (the rest were on disk)
    files: dict[str, Path] = field(default_factory=dict)


def plan_settings(config: EvalConfig, adapters: dict[Path, VMixAdapter]) -> list[Setting]:
    """The base model, then for each adapter: λ = 0 once, and every other λ with every dimension setting."""
    settings = [Setting("base")]
    for path, adapter in adapters.items():
        label = path.stem
        folder = _safe(label)
        for scale in config.lambdas:
            if scale == 0:
                settings.append(Setting(f"{folder}/lambda-0", label, 0.0, "any", None, path))
                continue
            for shown, slug, strengths in _dimension_settings(config.dimensions, adapter, path):
                key = f"{folder}/lambda-{scale:g}/{slug}"
                settings.append(Setting(key, label, scale, shown, strengths, path))
    keys = [s.key for s in settings]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise EvaluationError(f"two settings would share the image folder {repeated[0]}; write them differently")
    return settings


def _dimension_settings(
    specs: Sequence[str], adapter: VMixAdapter, path: Path
) -> Iterator[tuple[str, str, dict[str, float]]]:
    names = adapter.dimension_names
    for spec in specs:
        if spec in ("all", "none"):
            chosen: list[tuple[str, str, tuple[str, ...] | None]] = [(spec, spec, None if spec == "all" else ())]
        elif spec == "each":
            chosen = [(f"only {name}", f"only-{_safe(name)}", (name,)) for name in names]
        else:
            items = parse_dimensions(spec) or ()
            chosen = [(", ".join(items) or "none", "dims-" + _safe("+".join(items)), items)]
        for shown, slug, dims in chosen:
            try:
                strengths = VMixSettings(dimensions=dims).strengths(names)
            except SettingsError as exc:
                raise SettingsError(f"[vmix] dimensions {spec!r} for adapter {path.name}: {exc}") from None
            yield shown, slug, strengths


def _safe(text: str) -> str:
    """A file-name-safe form of a label."""
    return "".join(c if c.isalnum() or c in "._+=-" else "_" for c in text.replace(":", "=")) or "_"


class ImageStore:
    """Generated images on disk, keyed by setting, prompt (its index and a digest of its text) and seed."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, setting: Setting, index: int, prompt: str, seed: int) -> Path:
        digest = hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:8]
        return self.folder / setting.key / f"{index:05d}-{digest}-seed{seed}.png"

    def claim(self, descriptions: Sequence[tuple[Setting, dict[str, Any]]]) -> None:
        """Record how each setting's images are made; refuse, before writing anything, a folder whose images were
        made another way."""
        new = []
        for setting, description in descriptions:
            record = self.folder / setting.key / "setting.json"
            if not record.is_file():
                new.append((record, description))
                continue
            stored = json.loads(record.read_text(encoding="utf-8"))
            differences = sorted(k for k in set(stored) | set(description) if stored.get(k) != description.get(k))
            if differences:
                shown = ", ".join(f"{k}: {stored.get(k)!r} then, {description.get(k)!r} now" for k in differences)
                raise EvaluationError(
                    f"{record.parent} holds images made with other settings ({shown}); use another [output] folder, "
                    "or delete that folder to make them again"
                )
        for record, description in new:
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps(description, indent=1, sort_keys=True), encoding="utf-8")

    @staticmethod
    def save(image: Image.Image, path: Path) -> None:
        tmp = path.with_name(path.stem + ".tmp.png")  # a kill while writing leaves no half image under the real name
        image.save(tmp)
        tmp.replace(path)


def load_metric_models(config: EvalConfig, device: str | torch.device = "cpu") -> MetricModels:
    """The metric models from their local files, checked to fit together before any image is made."""
    clip = load_clip(config.clip, device)
    models = MetricModels(clip)
    if config.aesthetic_head is not None:
        source = config.aesthetic_clip or config.clip
        models.aesthetic_clip = clip if source == config.clip else load_clip(source, device)
        models.aesthetic_head = load_aesthetic_head(config.aesthetic_head).to(device)
        check_aesthetic_pair(models.aesthetic_clip, models.aesthetic_head)
    if config.fid_inception is not None and config.has_fid:
        require_torchmetrics()
        models.fid_features = load_inception(config.fid_inception).to(device)
    return models


def load_base(config: EvalConfig, device: torch.device) -> BaseModel:
    base = load_single_file(config.checkpoint, **config.model_options)
    base.to(device)
    dtype = PRECISION[config.precision]
    for module in (base.unet, *base.text_encoders):
        module.to(dtype=dtype)  # the VAE stays float32: SD's VAE overflows in fp16
    return base


def load_adapters(config: EvalConfig, base: BaseModel) -> dict[Path, VMixAdapter]:
    """Every adapter, checked against the base model's UNet before any image is made."""
    adapters = {}
    for path in config.adapters:
        adapter = load_adapter(path)
        check_adapter_fits(adapter, base.unet, path)
        adapters[path] = adapter
    return adapters


def run_evaluation(
    config: EvalConfig,
    *,
    base: BaseModel | None = None,
    adapters: dict[Path, VMixAdapter] | None = None,
    metrics: MetricModels | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> EvaluationResult:
    """Generate what is missing, score everything, write the tables, the plot and the grids. ``base``,
    ``adapters`` and ``metrics`` are loaded from the config unless given."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    base = base or load_base(config, device)
    adapters = adapters if adapters is not None else load_adapters(config, base)
    metrics = metrics or load_metric_models(config, device)
    settings = plan_settings(config, adapters)
    size = config.size or native_resolution(base.family, base.scheduler.config.prediction_type)
    store = ImageStore(config.output_dir / "images")
    store.claim([(setting, _description(config, base, setting, size)) for setting in settings])
    total = len(settings) * len(config.prompts) * len(config.seeds)
    log(
        f"[VMix] {len(settings)} settings × {len(config.prompts)} prompts × {len(config.seeds)} seeds = {total} "
        f"images at {size} px, DDIM {config.steps} steps, CFG {config.guidance:g}"
    )
    generated = _generate(config, base, adapters, settings, store, size, progress)
    log(f"[VMix] generated {generated} images ({total - generated} were already there); scoring")
    rows, per_image = _score(config, metrics, settings, store, device)
    files = write_outputs(config, settings, rows, per_image, store.path)
    log(f"[VMix] wrote {', '.join(str(p.relative_to(config.output_dir)) for p in files.values())}")
    return EvaluationResult(rows, generated, files)


def _description(config: EvalConfig, base: BaseModel, setting: Setting, size: int) -> dict[str, Any]:
    return {
        "base": base.name,
        "base_hash": base.hash,
        "adapter": setting.path.name if setting.path else None,
        "adapter_hash": short_hash(setting.path) if setting.path else None,
        "scale": setting.scale,
        "strengths": setting.strengths,
        "steps": config.steps,
        "guidance": config.guidance,
        "negative_prompt": config.negative_prompt,
        "size": size,
        "precision": config.precision,
        "clip_skip": config.clip_skip,
        "sampler": "DDIM",
    }


def _generate(
    config: EvalConfig,
    base: BaseModel,
    adapters: dict[Path, VMixAdapter],
    settings: Sequence[Setting],
    store: ImageStore,
    size: int,
    progress: bool,
) -> int:
    """Make every image that is not on disk yet, in batches of one setting; returns how many were made."""
    from tqdm.auto import tqdm  # installed with diffusers and transformers

    missing = {
        setting.key: [
            (index, seed)
            for index, prompt in enumerate(config.prompts)
            for seed in config.seeds
            if not store.path(setting, index, prompt, seed).is_file()
        ]
        for setting in settings
    }
    total = len(settings) * len(config.prompts) * len(config.seeds)
    todo = sum(len(jobs) for jobs in missing.values())
    bar = tqdm(total=total, initial=total - todo, desc="VMix evaluation", unit="image", disable=not progress)
    try:
        for setting in settings:
            jobs = missing[setting.key]
            for start in range(0, len(jobs), config.batch_size):
                chunk = jobs[start : start + config.batch_size]
                images = sample(
                    base,
                    [config.prompts[index] for index, _ in chunk],
                    [seed for _, seed in chunk],
                    size,
                    adapter=adapters[setting.path] if setting.path else None,
                    strengths=setting.strengths,
                    scale=setting.scale,
                    steps=config.steps,
                    guidance=config.guidance,
                    negative_prompt=config.negative_prompt,
                )
                for image, (index, seed) in zip(to_pil(images), chunk, strict=True):
                    store.save(image, store.path(setting, index, config.prompts[index], seed))
                bar.update(len(chunk))
    finally:
        bar.close()
    return todo


def _score(
    config: EvalConfig,
    metrics: MetricModels,
    settings: Sequence[Setting],
    store: ImageStore,
    device: torch.device,
) -> tuple[list[Row], list[dict[str, Any]]]:
    """Each image's CLIP and aesthetic score; each setting's summaries and FID against the reference folder."""
    fid = None
    if metrics.fid_features is not None and config.fid_reference is not None:
        fid = FrechetDistance(metrics.fid_features, device)
        fid.add_reference(_open_all(_reference_files(config.fid_reference)))
    items = [(index, prompt, seed) for index, prompt in enumerate(config.prompts) for seed in config.seeds]
    rows: list[Row] = []
    per_image: list[dict[str, Any]] = []
    for setting in settings:
        files = [store.path(setting, index, prompt, seed) for index, prompt, seed in items]
        clip: list[float] = []
        aesthetic: list[float] = []
        for start in range(0, len(files), METRIC_BATCH):
            images = list(_open_all(files[start : start + METRIC_BATCH]))
            prompts = [prompt for _, prompt, _ in items[start : start + METRIC_BATCH]]
            clip += clip_scores(metrics.clip, images, prompts).tolist()
            if metrics.aesthetic_head is not None and metrics.aesthetic_clip is not None:
                aesthetic += aesthetic_scores(metrics.aesthetic_clip, metrics.aesthetic_head, images).tolist()
        for n, (index, _, seed) in enumerate(items):
            per_image.append(
                {
                    "setting": setting.key,
                    "prompt_index": index,
                    "seed": seed,
                    "clip_score": clip[n],
                    "aesthetic": aesthetic[n] if aesthetic else None,
                }
            )
        distance = fid.distance(_open_all(files)) if fid is not None else None
        rows.append(Row(setting, len(files), summarise(clip), summarise(aesthetic) if aesthetic else None, distance))
    return rows, per_image


def _reference_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _open_all(paths: Sequence[Path]) -> Iterator[Image.Image]:
    for path in paths:
        try:
            with Image.open(path) as image:
                yield image.convert("RGB")
        except OSError as exc:
            raise EvaluationError(f"cannot read image {path} ({exc}); delete it to make it again") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmix_train.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="the evaluation's TOML file (example: examples/eval.toml)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu, … (default: cuda when available)")
    parser.add_argument("--check", action="store_true", help="check the config and load every model, then stop")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    parser.add_argument(
        "--convert-inception",
        nargs=2,
        metavar=("PTH", "SAFETENSORS"),
        help="convert FID's published Inception-v3 weights (.pth) once to the .safetensors file FID reads",
    )
    args = parser.parse_args(argv)
    if args.convert_inception:
        return _convert_inception(*args.convert_inception)
    if not args.config:
        parser.error("--config is required")
    try:
        config = load_eval_config(args.config)
        device = check_device(args.device) or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        print(f"[VMix] loading {config.checkpoint.name} and {len(config.adapters)} adapter(s)")
        base = load_base(config, device)
        adapters = load_adapters(config, base)
        metrics = load_metric_models(config, device)
        if args.check:
            count = len(plan_settings(config, adapters)) * len(config.prompts) * len(config.seeds)
            print(f"[VMix] config, base model, adapters and metric models are fine ({count} images to evaluate)")
            return 0
        result = run_evaluation(
            config, base=base, adapters=adapters, metrics=metrics, device=device, progress=not args.no_progress
        )
    except (*_USER_ERRORS, EvaluationError) as exc:
        print(f"[VMix] {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("[VMix] stopped; run the same command again to go on where it stopped", file=sys.stderr)
        return 130
    print(result.files["markdown"].read_text(encoding="utf-8"))
    return 0


def _convert_inception(source: str, target: str) -> int:
    return conversion_command(convert, (InceptionWeightsError,), source, target)


if __name__ == "__main__":
    sys.exit(main())
