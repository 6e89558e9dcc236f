"""From a folder of images to a labelled dataset: read and check every input, embed the images with CLIP (cached),
score each dimension, choose thresholds, write the trainer's dataset and the report. The command line is
``python -m vmix_train.label`` (vmix_train/label.py); the method is described in docs/labelling.md."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser from PyPI (requirements-train.txt)
    import tomli as tomllib

from vmix_ext.adapter import Dimension
from vmix_train.aesthetic import AestheticHead, AestheticHeadError, load_aesthetic_head
from vmix_train.clip_models import ClipScorer, load_clip
from vmix_train.config import ConfigError, load_config
from vmix_train.dataset import IMAGE_SUFFIXES, METADATA
from vmix_train.labelling_cache import EmbeddingCache, embed_images, model_identity
from vmix_train.labelling_inputs import (
    CalibrationItem,
    ImageItem,
    LabelError,
    MetadataEntry,
    find_images,
    read_calibration,
    read_metadata,
    read_sidecar,
    unreadable,
)
from vmix_train.labelling_output import OutputEntry, dataset_name, stray_images, write_dataset
from vmix_train.labelling_report import DimensionOutcome, Report, save_report
from vmix_train.labelling_scores import agreement, calibrate, threshold_for_fraction, zero_shot
from vmix_train.labelling_settings import AESTHETIC, CLIP, CommandLineRules, DimensionRule, build_rules
from vmix_train.preflight import UsageError, check_device

DEFAULT_CLIP = "openai/clip-vit-large-patch14"  # also the LAION aesthetic head's model
REPORT_FOLDER = ".vmix-label"  # inside the dataset folder; hidden, so image scans pass it by
CACHE_FOLDER = ".vmix-label-cache"  # inside the images folder, so every run on that folder shares it


@dataclass(frozen=True)
class LabelOptions:
    images: Path
    config: Path
    out: Path | None = None  # default: the run config's [data] folder
    clip: str = DEFAULT_CLIP
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    batch_size: int = 32
    workers: int = 4
    settings: Path | None = None
    rules: CommandLineRules = field(default_factory=CommandLineRules)
    calibration: Path | None = None
    keep_labels: bool = False
    caption_source: str = "sidecar"  # which wins when an image has both: "sidecar" or "metadata"
    caption_extension: str = ".txt"
    default_caption: str | None = None
    aesthetic_head: Path | None = None
    aesthetic_clip: str | None = None  # default: ``clip``
    min_aesthetic: float | None = None
    link: bool = False
    cache: Path | None = None  # default: <images>/.vmix-label-cache
    report: Path | None = None  # default: <dataset>/.vmix-label
    dry_run: bool = False


@dataclass
class _Inputs:
    dimensions: tuple[Dimension, ...]
    rules: list[DimensionRule]
    dataset: Path
    items: list[ImageItem]
    captions: dict[str, str]
    existing: dict[str, MetadataEntry]
    calibration: list[CalibrationItem]
    head: AestheticHead | None
    notes: list[str]


Progress = Callable[[int, str], Callable[[int], object]]  # (total, description) -> advance(n)


class _Scorers:
    """The loaded CLIP model(s) and aesthetic head, and every image's embedding from each model."""

    def __init__(self, options: LabelOptions, inputs: _Inputs, log: Callable[[str], object]) -> None:
        self.clip = self.aesthetic_clip = None
        self.head = inputs.head
        if any(rule.method == CLIP for rule in inputs.rules):
            log(f"[VMix] loading CLIP {options.clip} on {options.device}")
            self.clip = load_clip(options.clip, options.device, options.dtype)
        if self.head is not None:
            source = options.aesthetic_clip or options.clip
            if self.clip is not None and source == options.clip:
                self.aesthetic_clip = self.clip
            else:
                log(f"[VMix] loading CLIP {source} for the aesthetic head")
                self.aesthetic_clip = load_clip(source, options.device, options.dtype)
            width = self.aesthetic_clip.model.config.projection_dim
            if width != self.head.embed_dim:
                raise LabelError(
                    [
                        f"the aesthetic head {options.aesthetic_head} expects {self.head.embed_dim}-wide CLIP image "
                        f"embeddings (CLIP ViT-L/14), but {source} gives {width}; give the matching model with "
                        "--aesthetic-clip"
                    ]
                )
        self.tables: dict[int, dict[Path, torch.Tensor]] = {}
        self.embedded_now = self.from_cache = 0

    def embed(self, paths: Sequence[Path], options: LabelOptions, progress: Progress | None) -> None:
        """Embed every image with each model (cached); LabelError lists the images that could not be decoded."""
        failures: dict[Path, str] = {}
        for scorer in {id(s): s for s in (self.clip, self.aesthetic_clip) if s is not None}.values():
            advance = progress(len(paths), f"VMix labelling: CLIP {scorer.source}") if progress else (lambda _n: None)
            cache = EmbeddingCache(options.cache or options.images / CACHE_FOLDER, model_identity(scorer))
            rows, failed, now = embed_images(scorer, paths, cache, options.batch_size, advance, options.workers)
            self.tables[id(scorer)] = dict(zip(paths, rows, strict=True))
            failures.update(failed)
            self.embedded_now += now
            self.from_cache += len(paths) - len(failed) - now
        if failures:
            root = options.images.resolve()
            raise LabelError([f"{_shown(p, root)}: {why}" for p, why in sorted(failures.items())])

    def _embeds(self, scorer: ClipScorer, images: Sequence[Path]) -> torch.Tensor:
        return torch.stack([self.tables[id(scorer)][p] for p in images])

    def aesthetic(self, images: Sequence[Path]) -> torch.Tensor:
        assert self.head is not None and self.aesthetic_clip is not None
        with torch.no_grad():
            return self.head(self._embeds(self.aesthetic_clip, images))

    def scores(self, rule: DimensionRule, images: Sequence[Path]) -> torch.Tensor:
        if rule.method == AESTHETIC:
            return self.aesthetic(images)
        assert self.clip is not None
        positive, contrast = self.clip.text_embeds([rule.positive, rule.contrast])
        scale = float(self.clip.model.logit_scale.exp())
        return zero_shot(self._embeds(self.clip, images), positive, contrast, scale)


def run_labelling(
    options: LabelOptions, log: Callable[[str], object] = print, progress: Progress | None = None
) -> Report:
    """Label the images and write the dataset (unless ``dry_run``) and the report; raise LabelError listing every
    problem found, before the dataset is written."""
    inputs = read_inputs(options)
    scorers = _Scorers(options, inputs, log)
    scorers.embed(
        list(dict.fromkeys([i.path for i in inputs.items] + [c.path for c in inputs.calibration])), options, progress
    )

    items, aesthetic_note, aesthetic, filter_scores = inputs.items, None, {}, None
    if scorers.head is not None:  # every image's aesthetic score goes into scores.jsonl
        aesthetic_note = {"head": str(options.aesthetic_head), "model": scorers.aesthetic_clip.source}
        all_scores = scorers.aesthetic([i.path for i in items])
        aesthetic = dict(zip([i.name for i in items], all_scores.tolist(), strict=True))
        if options.min_aesthetic is not None:
            filter_scores = all_scores
            items = [item for item in items if aesthetic[item.name] >= options.min_aesthetic]
            aesthetic_note |= {"min_score": options.min_aesthetic, "dropped": len(inputs.items) - len(items)}
            if not items:
                raise LabelError([f"every image scores below --min-aesthetic {options.min_aesthetic:g}"])

    outcomes = [_outcome(rule, scorers.scores, [i.path for i in items], inputs.calibration) for rule in inputs.rules]
    entries, per_image = _label(items, outcomes, inputs, options.keep_labels)
    if aesthetic:
        for item, row in zip(items, per_image, strict=True):
            row["aesthetic"] = aesthetic[item.name]
        kept = {item.name for item in items}
        dropped = [i.name for i in inputs.items if i.name not in kept]
        per_image += [{"file_name": name, "aesthetic": aesthetic[name], "dropped": True} for name in dropped]
    report = Report(
        options.images,
        inputs.dataset,
        options.clip if scorers.clip is not None else None,
        len(entries),
        outcomes,
        embedded_now=scorers.embedded_now,
        from_cache=scorers.from_cache,
        aesthetic=aesthetic_note,
        filter_scores=filter_scores,
        notes=inputs.notes,
    )
    report_folder = options.report or inputs.dataset / REPORT_FOLDER
    if not options.dry_run:
        problems = stray_images(inputs.dataset, [e.file_name for e in entries])
        if problems:
            raise LabelError(problems)
        names = [d.name for d in inputs.dimensions]
        copied = write_dataset(inputs.dataset, entries, names, report_folder, options.link)
        if copied:
            report.notes.append(f"{copied} image(s) {'linked' if options.link else 'copied'} into {inputs.dataset}")
    save_report(report, report_folder, per_image)
    return report


def _label(
    items: Sequence[ImageItem], outcomes: Sequence[DimensionOutcome], inputs: _Inputs, keep_labels: bool
) -> tuple[list[OutputEntry], list[dict]]:
    """Each image's yes/no per dimension (score at or above the threshold, or the label kept from the existing
    metadata.jsonl), counted into the outcomes; the dataset entries and the per-image score rows."""
    entries, per_image = [], []
    for n, item in enumerate(items):
        stated = inputs.existing.get(item.name, MetadataEntry(None)).labels if keep_labels else {}
        labels = {}
        for outcome in outcomes:
            name = outcome.rule.name
            labels[name] = stated[name] if name in stated else bool(outcome.scores[n] >= outcome.threshold)
            outcome.kept += name in stated
            outcome.yes += labels[name]
        file_name, copy = dataset_name(item.path, item.name, inputs.dataset)
        entries.append(OutputEntry(item.path, file_name, inputs.captions[item.name], labels, copy))
        scores = {o.rule.name: float(o.scores[n]) for o in outcomes}
        per_image.append({"file_name": file_name, "scores": scores, "labels": labels})
    return entries, per_image


def _outcome(
    rule: DimensionRule,
    scores_of: Callable[[DimensionRule, Sequence[Path]], torch.Tensor],
    images: Sequence[Path],
    calibration: Sequence[CalibrationItem],
) -> DimensionOutcome:
    """The dimension's scores and threshold; the calibration's agreement wherever it labels the dimension."""
    scores = scores_of(rule, images)
    hand = [c for c in calibration if rule.name in c.labels]
    cal_scores = scores_of(rule, [c.path for c in hand]) if hand else None
    truth = torch.tensor([c.labels[rule.name] for c in hand]) if hand else None
    fitted = calibrate(cal_scores, truth, rule.default_threshold) if cal_scores is not None else None
    if rule.threshold is not None:
        threshold, source = rule.threshold, "set"
    elif rule.fraction is not None:
        threshold, source = threshold_for_fraction(scores, rule.fraction), "fraction"
    elif fitted is not None:
        threshold, source = fitted.threshold, "calibrated"
    else:
        threshold, source = rule.default_threshold, "default"
    if fitted is not None and cal_scores is not None and truth is not None:
        fitted = replace(fitted, agreement=agreement(cal_scores, truth, threshold))
    return DimensionOutcome(rule, threshold, source, scores, 0, 0, fitted, cal_scores, truth)


def _writable(folder: Path) -> bool:
    """Whether ``folder`` exists as a writable folder or could be created (its nearest existing parent is)."""
    for candidate in (folder, *folder.absolute().parents):
        if candidate.exists():
            return candidate.is_dir() and os.access(candidate, os.W_OK | os.X_OK)
    return False


def _shown(path: Path, root: Path) -> str:
    resolved = path.resolve()
    return resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else str(path)


def read_inputs(options: LabelOptions) -> _Inputs:
    """Everything that can be checked without a model, every problem collected into one LabelError."""
    problems: list[str] = []
    notes: list[str] = []
    dimensions, data_folder = _run_config(options.config, problems, notes)
    names = [d.name for d in dimensions]
    rules = build_rules(dimensions, options.settings, options.rules, problems) if dimensions else []
    dataset = options.out or data_folder
    if dataset is None and dimensions:
        problems.append("no dataset folder: give --out")
    elif dataset is not None and data_folder is not None and dataset.resolve() != data_folder.resolve():
        notes.append(f"the run config's [data] folder is {data_folder}; set it to {dataset} to train on this dataset")
    if options.batch_size < 1:
        problems.append(f"--batch-size must be at least 1, got {options.batch_size}")
    try:
        check_device(options.device)  # the trainer's check: cuda without a GPU, cuda:7 with one, a typo
    except UsageError as exc:
        problems.append(str(exc))
    cache = options.cache or options.images / CACHE_FOLDER
    if not _writable(cache):
        problems.append(f"the embedding cache {cache} cannot be written: give --cache a folder you can write to")

    root = options.images
    items: list[ImageItem] = []
    if not root.is_dir():
        problems.append(f"images folder {root} does not exist")
    else:
        inside = [dataset] if dataset is not None and dataset.resolve() != root.resolve() else []
        items = find_images(root, skip=inside)
        if not items:
            suffixes = " ".join(sorted(IMAGE_SUFFIXES))
            problems.append(f"no images in {root} or its subfolders (looked for {suffixes})")
    readable = []
    for item in items:
        if (why := unreadable(item.path)) is None:
            readable.append(item)
        else:
            problems.append(f"{item.name}: {why}")

    existing: dict[str, MetadataEntry] = {}
    if root.is_dir() and (root / METADATA).is_file():
        # Labels in an old metadata.jsonl matter only when they are kept; its captions are used either way.
        existing = read_metadata(root / METADATA, names if options.keep_labels else None, problems)
    elif options.keep_labels:
        problems.append(f"--keep-labels: there is no {METADATA} in {root} to keep labels from")
    captions = _captions(readable, existing, options, problems)  # a broken image needs no caption message too

    calibration = read_calibration(options.calibration, names, problems) if options.calibration else []
    head = None
    if options.aesthetic_head is not None:
        try:
            head = load_aesthetic_head(options.aesthetic_head)
        except AestheticHeadError as exc:
            problems.append(str(exc))
    elif options.min_aesthetic is not None or any(r.method == AESTHETIC for r in rules):
        problems.append("--min-aesthetic and aesthetic dimensions need the head: give --aesthetic-head FILE")
    if options.min_aesthetic is not None and dataset is not None and root.resolve().is_relative_to(dataset.resolve()):
        problems.append(
            "--min-aesthetic cannot drop images from a dataset labelled in place (the dataset check wants every "
            "image in the folder listed): give --out a separate folder"
        )
    if dataset is not None and items and options.min_aesthetic is None and not options.dry_run:
        problems += stray_images(dataset, [dataset_name(i.path, i.name, dataset)[0] for i in items])
    if problems:
        raise LabelError(problems)
    assert dataset is not None
    return _Inputs(dimensions, rules, dataset, items, captions, existing, calibration, head, notes)


def _captions(
    items: Sequence[ImageItem], existing: dict[str, MetadataEntry], options: LabelOptions, problems: list[str]
) -> dict[str, str]:
    captions: dict[str, str] = {}
    missing = []
    for item in items:
        sidecar, problem = read_sidecar(item.path, options.caption_extension)
        if problem:
            problems.append(f"{item.name}: {problem}")
        stored = existing.get(item.name, MetadataEntry(None)).caption
        order = (sidecar, stored) if options.caption_source == "sidecar" else (stored, sidecar)
        caption = next((c for c in order if c), options.default_caption)
        if caption:
            captions[item.name] = caption
        else:
            missing.append(item.name)
    for name in missing:
        problems.append(
            f"{name}: no caption (add {Path(name).with_suffix(options.caption_extension).name} next to it, an "
            f"entry in {METADATA}, or give --default-caption)"
        )
    return captions


def _run_config(path: Path, problems: list[str], notes: list[str]) -> tuple[tuple[Dimension, ...], Path | None]:
    """The run config's dimensions and [data] folder, read with the trainer's own checks. Paths that do not exist
    yet are no obstacle to labelling (it writes the dataset; the checkpoint is needed only to train): they become
    notes."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        missing = [p for p in exc.problems if p.startswith("[") and p.endswith(" does not exist")]
        others = [p for p in exc.problems if p not in missing]
        if others:
            problems += [f"run config {path}: {p}" for p in others]
            return (), None
        raw = tomllib.loads(path.read_text(encoding="utf-8"))  # checked in full by load_config above
        notes += [f"the run config's {p}; training will need it" for p in missing if not p.startswith("[data]")]
        folder = (path.parent / raw["data"]["folder"]).resolve()
        dims = tuple(Dimension(d["name"], d["positive"], d["negative"]) for d in raw["dimensions"])
        return dims, folder
    return config.dimensions, config.dataset
