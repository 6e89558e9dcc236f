"""What the evaluation writes: the table (Markdown and CSV), every image's scores, the λ sweep plot and the image
grids. Drawn with Pillow, like the trainer's loss curve: no plotting library needed."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw

from vmix_train.metrics import Summary

if TYPE_CHECKING:
    from vmix_train.evaluate import Row, Setting
    from vmix_train.evaluate_config import EvalConfig

ImagePath = Callable[["Setting", int, str, int], Path]

_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207))
_TILE = 256  # the largest side of an image in the grids


def write_outputs(
    config: EvalConfig,
    settings: Sequence[Setting],
    rows: Sequence[Row],
    per_image: Sequence[dict[str, Any]],
    image_path: ImagePath,
) -> dict[str, Path]:
    out = config.output_dir
    files = {
        "markdown": out / "results.md",
        "csv": out / "results.csv",
        "scores": out / "scores.csv",
        "plot": out / "lambda-sweep.png",
        "grids": out / "grids",
    }
    _write_text(files["markdown"], markdown_table(config, rows))
    _write_csv(files["csv"], [_csv_row(row) for row in rows])
    _write_csv(files["scores"], list(per_image))
    save_lambda_plot(rows, files["plot"])
    files["grids"].mkdir(parents=True, exist_ok=True)
    for index in range(min(config.grid_prompts, len(config.prompts))):
        grid = prompt_grid(settings, config.prompts[index], index, config.seeds, image_path)
        _save_png(grid, files["grids"] / f"prompt-{index:05d}.png")
    return files


# -- the table ---------------------------------------------------------------------------------------------------


def markdown_table(config: EvalConfig, rows: Sequence[Row]) -> str:
    has_fid = any(row.fid is not None for row in rows)
    has_aesthetic = any(row.aesthetic is not None for row in rows)
    images = rows[0].count if rows else 0
    negative = f"negative prompt {config.negative_prompt!r}" if config.negative_prompt else "no negative prompt"
    lines = [
        "# VMix evaluation",
        "",
        f"Base model `{config.checkpoint.name}`; {len(config.prompts)} prompts × {len(config.seeds)} seeds = "
        f"{images} images per setting; DDIM {config.steps} steps, CFG {config.guidance:g}, {negative}.",
        f"CLIP score: 100·max(cos, 0) with `{config.clip}`."
        + (f" Aesthetic: the LAION head `{config.aesthetic_head.name}`." if config.aesthetic_head else "")
        + (f" FID: against `{config.fid_reference}`." if has_fid else ""),
        "Per-image scores: mean ± standard error over prompts × seeds"
        + ("; FID: the setting's whole set of images against the reference." if has_fid else "."),
        "",
    ]
    header = ["Model", "λ", "Dimensions"]
    header += ["FID ↓"] * has_fid + ["CLIP score ↑"] + ["Aesthetic ↑"] * has_aesthetic + ["Images"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" if name in ("Model", "Dimensions") else "---:" for name in header) + "|")
    for row in rows:
        setting = row.setting
        cells = [setting.adapter or "base", "–" if setting.is_base else f"{setting.scale:g}", setting.dimensions or "–"]
        if has_fid:
            cells.append(_number(row.fid, 2))
        cells.append(_with_error(row.clip, 2))
        if has_aesthetic:
            cells.append(_with_error(row.aesthetic, 3))
        cells.append(str(row.count))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _number(value: float | None, digits: int) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _with_error(summary: Summary | None, digits: int) -> str:
    if summary is None:
        return "–"
    if math.isnan(summary.se):
        return _number(summary.mean, digits)
    return f"{summary.mean:.{digits}f} ± {summary.se:.{digits}f}"


def _csv_row(row: Row) -> dict[str, Any]:
    setting = row.setting
    aesthetic = row.aesthetic
    return {
        "setting": setting.key,
        "adapter": setting.adapter,
        "lambda": "" if setting.is_base else setting.scale,
        "dimensions": setting.dimensions,
        "images": row.count,
        "fid": "" if row.fid is None else row.fid,
        "clip_score": row.clip.mean,
        "clip_score_se": row.clip.se,
        "aesthetic": "" if aesthetic is None else aesthetic.mean,
        "aesthetic_se": "" if aesthetic is None else aesthetic.se,
    }


def _write_csv(path: Path, records: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]) if records else [])
        writer.writeheader()
        writer.writerows(records)
    tmp.replace(path)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _save_png(image: Image.Image, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp.png")
    image.save(tmp)
    tmp.replace(path)


# -- the λ sweep (the paper's Fig. 7) ------------------------------------------------------------------------------


def sweep_series(rows: Sequence[Row]) -> dict[str, list[Row]]:
    """One line per adapter and dimension setting, ordered by λ; the adapter's λ = 0 row starts every line."""
    zero = {row.setting.adapter: row for row in rows if not row.setting.is_base and row.setting.scale == 0}
    series: dict[str, list[Row]] = {}
    for row in rows:
        setting = row.setting
        if setting.is_base or setting.scale == 0:
            continue
        name = f"{setting.adapter} · {setting.dimensions}"
        if name not in series:
            series[name] = [zero[setting.adapter]] if setting.adapter in zero else []
        series[name].append(row)
    return series


def save_lambda_plot(rows: Sequence[Row], path: Path) -> None:
    """Aesthetic score (left) and CLIP score (right) against λ, ±1 standard error; the base model dashed."""
    series = sweep_series(rows)
    panel_width, panel_height, gap, legend_line = 500, 360, 90, 16
    image = Image.new("RGB", (2 * panel_width + gap + 80, panel_height + 60 + legend_line * len(series)), "white")
    draw = ImageDraw.Draw(image)
    base = next((row for row in rows if row.setting.is_base), None)
    panels: list[tuple[str, Callable[[Row], Summary | None]]] = [
        ("aesthetic score", lambda row: row.aesthetic),
        ("CLIP score", lambda row: row.clip),
    ]
    for n, (title, metric) in enumerate(panels):
        box = (70 + n * (panel_width + gap), 30, 70 + n * (panel_width + gap) + panel_width, panel_height)
        _draw_panel(draw, box, title, series, metric, metric(base) if base else None)
    for n, name in enumerate(series):
        y = panel_height + 45 + n * legend_line
        draw.rectangle((60, y + 3, 80, y + 9), fill=_COLOURS[n % len(_COLOURS)])
        draw.text((88, y), name, fill="black")
    _save_png(image, path)


def _draw_panel(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    title: str,
    series: dict[str, list[Row]],
    metric: Callable[[Row], Summary | None],
    base: Summary | None,
) -> None:
    left, top, right, bottom = box
    draw.rectangle(box, outline="black")
    draw.text((left + 4, top - 18), f"{title} vs lambda", fill="black")  # the default font has no Greek letters
    points = [(row.setting.scale, metric(row)) for rows in series.values() for row in rows]
    measured = [(x, s) for x, s in points if s is not None and not math.isnan(s.mean)]
    if not measured:
        draw.text((left + 10, (top + bottom) // 2), "not measured", fill="gray")
        return
    spread = [s.se if not math.isnan(s.se) else 0.0 for _, s in measured]
    low = min(s.mean - e for (_, s), e in zip(measured, spread, strict=True))
    high = max(s.mean + e for (_, s), e in zip(measured, spread, strict=True))
    if base is not None and not math.isnan(base.mean):
        low, high = min(low, base.mean), max(high, base.mean)
    pad = (high - low) * 0.1 or max(abs(high) * 0.01, 1e-3)
    low, high = low - pad, high + pad
    x_max = max(x for x, _ in measured) or 1.0

    def at(x: float, y: float) -> tuple[float, float]:
        return left + (right - left) * x / x_max, bottom - (bottom - top) * (y - low) / (high - low)

    digits = max(0, 1 - math.floor(math.log10((high - low) / 4)))  # enough to tell the ticks apart
    for tick in range(5):
        value = low + (high - low) * tick / 4
        _, y = at(0, value)
        draw.line((left - 4, y, left, y), fill="black")
        draw.text((left - 62, y - 6), f"{value:.{digits}f}", fill="black")
    for x in sorted({x for x, _ in measured}):
        px, _ = at(x, low)
        draw.line((px, bottom, px, bottom + 4), fill="black")
        draw.text((px - 8, bottom + 6), f"{x:g}", fill="black")
    if base is not None and not math.isnan(base.mean):
        _, y = at(0, base.mean)
        for start in range(left, right, 12):
            draw.line((start, y, min(start + 6, right), y), fill=(120, 120, 120))
        draw.text((right - 34, y - 14), "base", fill=(120, 120, 120))
    for n, rows in enumerate(series.values()):
        colour = _COLOURS[n % len(_COLOURS)]
        line = [(row.setting.scale, metric(row)) for row in rows]
        line = [(x, s) for x, s in line if s is not None and not math.isnan(s.mean)]
        if len(line) > 1:
            draw.line([at(x, s.mean) for x, s in line], fill=colour, width=2)
        for x, s in line:
            px, py = at(x, s.mean)
            if not math.isnan(s.se):
                draw.line((px, at(x, s.mean - s.se)[1], px, at(x, s.mean + s.se)[1]), fill=colour)
            draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=colour)


# -- image grids -------------------------------------------------------------------------------------------------


def prompt_grid(
    settings: Sequence[Setting], prompt: str, index: int, seeds: Sequence[int], image_path: ImagePath
) -> Image.Image:
    """One row per setting (labelled), one column per seed."""
    tiles = [[_tile(image_path(setting, index, prompt, seed)) for seed in seeds] for setting in settings]
    width = max(60, *(tile.width for row in tiles for tile in row))
    height = max(44, *(tile.height for row in tiles for tile in row))  # room for a three-line label
    label, header, gap = 180, 36, 4
    sheet = Image.new("RGB", (label + len(seeds) * (width + gap), header + len(settings) * (height + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), f"prompt {index}: {prompt[:140]}", fill="black")
    for c, seed in enumerate(seeds):
        draw.text((label + c * (width + gap) + 4, header - 14), f"seed {seed}", fill="black")
    for r, (setting, row) in enumerate(zip(settings, tiles, strict=True)):
        y = header + r * (height + gap)
        text = "base" if setting.is_base else f"{setting.adapter}\nlambda {setting.scale:g}\n{setting.dimensions}"
        draw.multiline_text((4, y + 4), text, fill="black")
        for c, tile in enumerate(row):
            sheet.paste(tile, (label + c * (width + gap), y))
    return sheet


def _tile(path: Path) -> Image.Image:
    with Image.open(path) as image:
        tile = image.convert("RGB")
    if max(tile.size) > _TILE:
        tile.thumbnail((_TILE, _TILE))
    return tile
