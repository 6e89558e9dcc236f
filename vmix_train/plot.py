"""The loss curve as a PNG, drawn with Pillow (no plotting library needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

_SIZE = (800, 400)
_MARGIN = (60, 20, 20, 40)  # left, top, right, bottom


def moving_average(values: Sequence[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def save_loss_curve(losses: Sequence[float], path: str | Path, first_step: int = 1) -> None:
    """Each step's loss (light) and its moving average over ~2 % of the run (dark), on linear axes."""
    image = Image.new("RGB", _SIZE, "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = _MARGIN
    width, height = _SIZE[0] - left - right, _SIZE[1] - top - bottom
    draw.rectangle((left, top, left + width, top + height), outline="black")
    if losses:
        low, high = min(losses), max(losses)
        span = (high - low) or 1.0
        count = len(losses)

        def point(i: int, value: float) -> tuple[float, float]:
            x = left + (width * i / (count - 1) if count > 1 else width / 2)
            return x, top + height * (1 - (value - low) / span)

        smooth = moving_average(losses, max(1, count // 50))
        draw.line([point(i, v) for i, v in enumerate(losses)], fill=(170, 190, 230), width=1)
        draw.line([point(i, v) for i, v in enumerate(smooth)], fill=(20, 60, 160), width=2)
        draw.text((4, top), f"{high:.4g}", fill="black")
        draw.text((4, top + height - 10), f"{low:.4g}", fill="black")
        draw.text((left, top + height + 6), f"step {first_step}", fill="black")
        draw.text((left + width - 80, top + height + 6), f"step {first_step + count - 1}", fill="black")
    draw.text((left + width // 2 - 40, top + height + 20), "training loss", fill="black")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    image.save(tmp)
    tmp.replace(path)
