"""Model families VMix knows, told apart by the width of the cross-attention context."""

from __future__ import annotations

FAMILY_CONTEXT_DIM: dict[str, int] = {
    "sd1": 768,
    "sd2": 1024,
    "sdxl": 2048,
    "sdxl_refiner": 1280,
}

FAMILY_LABEL: dict[str, str] = {
    "sd1": "SD 1.x",
    "sd2": "SD 2.x",
    "sdxl": "SDXL",
    "sdxl_refiner": "SDXL refiner",
}


def family_for_context_dim(context_dim: int) -> str | None:
    """The family whose text encoders produce contexts of this width, or None for an unknown width."""
    for family, width in FAMILY_CONTEXT_DIM.items():
        if width == context_dim:
            return family
    return None


def family_label(family: str | None) -> str:
    if family is None:
        return "an unknown model family"
    return FAMILY_LABEL.get(family, family)
