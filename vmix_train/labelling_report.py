"""The labelling report: per dimension the yes/no counts, the threshold and where it came from, the calibration
agreement, and the score distribution drawn as a PNG with Pillow. Printed as Markdown and saved as
``report.md``, ``report.json`` and ``scores.png``; every image's scores go to ``scores.jsonl``."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from vmix_train.labelling_scores import Calibration
from vmix_train.labelling_settings import CLIP, DimensionRule

REPORT_MD, REPORT_JSON, SCORES_PNG, SCORES_JSONL = "report.md", "report.json", "scores.png", "scores.jsonl"
_PANEL = (800, 170)
_MARGIN = (50, 28, 20, 26)  # left, top, right, bottom
_BINS = 50
_YES, _NO, _CUT = (60, 150, 80), (170, 170, 170), (200, 30, 30)


@dataclass
class DimensionOutcome:
    rule: DimensionRule
    threshold: float
    source: str  # "default", "set", "fraction", "calibrated"
    scores: torch.Tensor  # of the images in the dataset
    yes: int = 0
    kept: int = 0  # labels taken from the existing metadata.jsonl instead of the score
    calibration: Calibration | None = None
    calibration_scores: torch.Tensor | None = None
    calibration_truth: torch.Tensor | None = None

    @property
    def no(self) -> int:
        return len(self.scores) - self.yes

    def summary(self) -> dict[str, Any]:
        scores = self.scores
        out: dict[str, Any] = {
            "name": self.rule.name,
            "method": self.rule.method,
            "positive": self.rule.positive if self.rule.method == CLIP else None,
            "contrast": self.rule.contrast if self.rule.method == CLIP else None,
            "threshold": self.threshold,
            "threshold_source": self.source,
            "fraction_asked": self.rule.fraction,
            "yes": self.yes,
            "no": self.no,
            "kept_from_metadata": self.kept,
            "score_min": float(scores.min()) if len(scores) else None,
            "score_mean": float(scores.mean()) if len(scores) else None,
            "score_max": float(scores.max()) if len(scores) else None,
        }
        if self.calibration is not None:
            c = self.calibration
            out["calibration"] = {
                "images": c.images,
                "hand_yes": c.yes,
                "agreement": c.agreement,
                "agreement_at_default": c.default_agreement,
                "best_threshold": c.threshold,
            }
        return out


@dataclass
class Report:
    images_folder: Path
    dataset_folder: Path
    clip_model: str | None
    labelled: int
    outcomes: list[DimensionOutcome]
    embedded_now: int = 0
    from_cache: int = 0
    aesthetic: dict[str, Any] | None = None  # head, model, min_score, dropped
    filter_scores: torch.Tensor | None = None  # every image's aesthetic score, when images were filtered by it
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "images_folder": str(self.images_folder),
            "dataset_folder": str(self.dataset_folder),
            "clip_model": self.clip_model,
            "images_labelled": self.labelled,
            "embedded_now": self.embedded_now,
            "embeddings_from_cache": self.from_cache,
            "aesthetic": self.aesthetic,
            "dimensions": [o.summary() for o in self.outcomes],
            "notes": self.notes,
        }

    def markdown(self) -> str:
        lines = [
            "# VMix labelling report",
            "",
            f"- images: {self.images_folder}",
            f"- dataset written: {self.dataset_folder} ({self.labelled} images)",
            f"- CLIP model: {self.clip_model or 'not used'} ({self.embedded_now} embedded now, "
            f"{self.from_cache} from the cache)",
        ]
        if self.aesthetic:
            a = self.aesthetic
            dropped = f"; images below {a['min_score']:g} dropped: {a['dropped']}" if "min_score" in a else ""
            lines.append(f"- aesthetic head: {a['head']} on {a['model']}{dropped}")
        lines += [
            "",
            "| dimension | scored by | yes | no | threshold | calibration agreement |",
            "|---|---|---:|---:|---|---|",
        ]
        for o in self.outcomes:
            rule = o.rule
            method = f'"{rule.positive}" vs "{rule.contrast}"' if rule.method == CLIP else "aesthetic score"
            asked = f", {rule.fraction:g} asked" if o.source == "fraction" else ""
            threshold = f"{o.threshold:.4g} ({o.source}{asked})"
            if o.kept:
                threshold += f"; {o.kept} labels kept from metadata.jsonl"
            agreed = "–"
            if o.calibration is not None:
                c = o.calibration
                agreed = f"{c.agreement:.0%} of {c.images} (default threshold: {c.default_agreement:.0%})"
            lines.append(f"| {rule.name} | {method} | {o.yes} | {o.no} | {threshold} | {agreed} |")
        if self.notes:
            lines += ["", *(f"- note: {n}" for n in self.notes)]
        lines += ["", f"Score distributions: {SCORES_PNG}; every image's scores: {SCORES_JSONL}.", ""]
        return "\n".join(lines)


def save_report(report: Report, folder: Path, per_image: Sequence[dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _write_text(folder / REPORT_MD, report.markdown())
    _write_text(folder / REPORT_JSON, json.dumps(report.summary(), indent=2) + "\n")
    _write_text(folder / SCORES_JSONL, "".join(json.dumps(row) + "\n" for row in per_image))
    panels = [(o.rule.name, o.scores, o.threshold, o) for o in report.outcomes]
    if report.aesthetic and report.filter_scores is not None:
        panels.append(("aesthetic filter", report.filter_scores, report.aesthetic["min_score"], None))
    draw_distributions(panels, folder / SCORES_PNG)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def draw_distributions(panels: Sequence[tuple[str, torch.Tensor, float, DimensionOutcome | None]], path: Path) -> None:
    """One histogram per panel, stacked: bars at or above the threshold green ("yes"), below grey; the threshold
    as a red line; hand-labelled calibration images as ticks under the axis (green yes, grey no)."""
    width, height = _PANEL
    image = Image.new("RGB", (width, height * max(1, len(panels))), "white")
    draw = ImageDraw.Draw(image)
    for index, (title, scores, threshold, outcome) in enumerate(panels):
        _panel(draw, index * height, title, scores, threshold, outcome)
    tmp = path.with_name(path.name + ".tmp.png")
    image.save(tmp)
    os.replace(tmp, path)


def _panel(
    draw: ImageDraw.ImageDraw,
    top0: int,
    title: str,
    scores: torch.Tensor,
    threshold: float,
    outcome: DimensionOutcome | None,
) -> None:
    width, height = _PANEL
    left, top, right, bottom = _MARGIN
    x0, y0, x1, y1 = left, top0 + top, width - right, top0 + height - bottom
    values = scores.float()
    if outcome is not None and outcome.rule.method == CLIP:
        low, high = 0.0, 1.0  # probabilities
    else:
        extremes = [*values.tolist(), threshold]
        low, high = min(extremes), max(extremes)
        pad = (high - low) * 0.05 or 0.5
        low, high = low - pad, high + pad
    span = high - low
    counts = torch.histc(values, bins=_BINS, min=low, max=high) if len(values) else torch.zeros(_BINS)
    tallest = max(1.0, float(counts.max()))
    yes = int((values >= threshold).sum())
    draw.text((x0, top0 + 6), f"{title}: yes {yes}, no {len(values) - yes}, threshold {threshold:.4g}", fill="black")
    draw.rectangle((x0, y0, x1, y1), outline="black")
    bar = (x1 - x0) / _BINS
    for b, count in enumerate(counts.tolist()):
        if count:
            centre = low + span * (b + 0.5) / _BINS
            colour = _YES if centre >= threshold else _NO
            draw.rectangle((x0 + b * bar, y1 - (y1 - y0) * count / tallest, x0 + (b + 1) * bar - 1, y1), fill=colour)

    def x(value: float) -> float:
        return x0 + (x1 - x0) * (value - low) / span

    draw.line((x(threshold), y0, x(threshold), y1), fill=_CUT, width=2)
    if outcome is not None and outcome.calibration_scores is not None and outcome.calibration_truth is not None:
        for score, truth in zip(outcome.calibration_scores.tolist(), outcome.calibration_truth.tolist(), strict=True):
            draw.line((x(score), y1 + 2, x(score), y1 + 8), fill=_YES if truth else _NO, width=1)
    draw.text((x0, y1 + 10), f"{low:.3g}", fill="black")
    draw.text((x1 - 30, y1 + 10), f"{high:.3g}", fill="black")
    draw.text((4, y0), str(int(tallest)), fill="black")
