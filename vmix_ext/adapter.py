"""The VMix adapter: aesthetic embeddings, the projection F and Z, and one value projection per layer."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import cross_attention_layers, value_projection

CONTEXT_TOKENS = 77


# Limits that keep every name and text short enough for a status line, an infotext entry and one CLIP prompt.
DIMENSION_NAME_MAX = 64
DIMENSION_TEXT_MAX = 500
# Words the infotext and X/Y/Z values use for "every dimension" and "no dimension" (compared case-insensitively).
RESERVED_DIMENSION_NAMES = ("all", "none")
# Separators of the infotext ("name:0.5, other"), of X/Y/Z cells ("a+b", CSV quotes) and of key=value lists.
DIMENSION_NAME_SEPARATORS = ",:+=\"'"


def dimension_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a dimension (it would break infotext, X/Y/Z cells or the API), or None if it can."""
    if not isinstance(name, str):
        return f"must be text, not {type(name).__name__}"
    if not name.strip():
        return "is empty"
    if len(name) > DIMENSION_NAME_MAX:
        return f"is longer than {DIMENSION_NAME_MAX} characters"
    if name != name.strip():
        return "starts or ends with a space"
    if name.casefold() in RESERVED_DIMENSION_NAMES:
        return "is reserved: infotext and X/Y/Z use 'all' and 'none' for every and no dimension"
    used = sorted({ch for ch in name if ch in DIMENSION_NAME_SEPARATORS})
    if used:
        return f"contains {' '.join(used)}; names may not contain any of {' '.join(DIMENSION_NAME_SEPARATORS)}"
    return text_problem(name)


def text_problem(text: str) -> str | None:
    """Control characters, line breaks and lone surrogates (text that cannot be written as UTF-8) are refused."""
    for ch in text:
        category = unicodedata.category(ch)
        if category == "Cs":
            return "cannot be written as UTF-8 (it holds a lone surrogate)"
        if category in ("Cc", "Cf", "Zl", "Zp"):
            return f"contains the control character U+{ord(ch):04X}"
    return None


@dataclass(frozen=True)
class Dimension:
    """One aesthetic dimension: a short name, the label text that turns it on, and a rare identifier for off."""

    name: str
    positive: str
    negative: str

    def __post_init__(self) -> None:
        problem = dimension_name_problem(self.name)
        if problem:
            raise ValueError(f"dimension name {shorten(self.name)} {problem}")
        for label in ("positive", "negative"):
            text = getattr(self, label)
            if not isinstance(text, str):
                problem = f"must be text, not {type(text).__name__}"
            elif len(text) > DIMENSION_TEXT_MAX:
                problem = f"is longer than {DIMENSION_TEXT_MAX} characters"
            else:
                problem = text_problem(text)
            if problem:
                raise ValueError(f"the {label} text of dimension '{self.name}' {problem}")


def shorten(value: object, limit: int = 80) -> str:
    """``repr`` of a value cut to ``limit`` characters: safe to print (escapes control characters and surrogates)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


Strengths = Mapping[str, float] | Sequence[float] | torch.Tensor | None


class VMixAdapter(nn.Module):
    """AesEmb (t_i, t̂_i), F (token-axis Linear N→C, LayerNorm over d), Z (zero-started Linear d→d), W_Va per layer.

    ``layer_paths`` are ldm module paths such as ``input_blocks.1.1.transformer_blocks.0.attn2``.
    """

    def __init__(
        self,
        dimensions: Sequence[Dimension],
        context_dim: int,
        layer_inner_dims: Mapping[str, int],
        family: str,
        tokens: int = CONTEXT_TOKENS,
    ) -> None:
        super().__init__()
        if not dimensions:
            raise ValueError("a VMix adapter needs at least one aesthetic dimension")
        names = [d.name for d in dimensions]
        if len(set(names)) != len(names):
            raise ValueError(f"dimension names must be unique, got {names}")
        if not layer_inner_dims:
            raise ValueError("a VMix adapter needs at least one cross-attention layer")
        self.dimensions = tuple(dimensions)
        self.family = family
        self.context_dim = context_dim
        self.tokens = tokens
        self.layer_paths = tuple(layer_inner_dims)
        n = len(dimensions)
        self.register_buffer("aes_positive", torch.zeros(n, context_dim))
        self.register_buffer("aes_negative", torch.zeros(n, context_dim))
        self.token_proj = nn.Linear(n, tokens)
        self.norm = nn.LayerNorm(context_dim)
        self.zero_proj = nn.Linear(context_dim, context_dim)
        nn.init.zeros_(self.zero_proj.weight)
        nn.init.zeros_(self.zero_proj.bias)
        # ModuleDict keys may not contain dots, so layers are stored by index; layer_paths gives the names.
        self.value_projs = nn.ModuleList(
            nn.Linear(context_dim, layer_inner_dims[path], bias=False) for path in self.layer_paths
        )

    @classmethod
    def untrained(
        cls,
        unet: nn.Module,
        dimensions: Sequence[Dimension],
        aes_positive: torch.Tensor,
        aes_negative: torch.Tensor,
        family: str,
        tokens: int = CONTEXT_TOKENS,
    ) -> VMixAdapter:
        """A fresh adapter for ``unet``: Z at zero (so it changes nothing yet) and each W_Va a copy of W_V."""
        layers = cross_attention_layers(unet)
        projections = {path: value_projection(layer) for path, layer in layers.items()}
        context_dims = {p.in_features for p in projections.values()}
        if len(context_dims) != 1:
            raise ValueError(f"cross-attention layers disagree on the context width: {sorted(context_dims)}")
        context_dim = context_dims.pop()
        adapter = cls(
            dimensions, context_dim, {path: p.out_features for path, p in projections.items()}, family, tokens
        )
        with torch.no_grad():
            adapter.aes_positive.copy_(aes_positive)
            adapter.aes_negative.copy_(aes_negative)
            for target, path in zip(adapter.value_projs, adapter.layer_paths, strict=True):
                target.weight.copy_(projections[path].weight.float())
        return adapter

    @property
    def dimension_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dimensions)

    def strengths(self, strengths: Strengths) -> torch.Tensor:
        """Per-dimension strengths w_i in [0, 1] as a float tensor (N,) or (B, N); None means every dimension on."""
        n = len(self.dimensions)
        if strengths is None:
            return torch.ones(n)
        if isinstance(strengths, Mapping):
            unknown = sorted(set(strengths) - set(self.dimension_names))
            if unknown:
                raise ValueError(f"unknown dimension(s) {unknown}; this adapter has {list(self.dimension_names)}")
            return torch.tensor([float(strengths.get(name, 0.0)) for name in self.dimension_names])
        tensor = torch.as_tensor(strengths, dtype=torch.float32)
        if tensor.shape[-1] != n:
            raise ValueError(f"expected {n} strengths (one per dimension), got shape {tuple(tensor.shape)}")
        return tensor

    def aesthetic_tokens(self, strengths: Strengths, dtype: torch.dtype | None = None) -> torch.Tensor:
        """f_t: t̂_i + w_i·(t_i − t̂_i), shape (..., N, d)."""
        dtype = dtype or self.aes_positive.dtype
        positive, negative = self.aes_positive.to(dtype), self.aes_negative.to(dtype)
        w = self.strengths(strengths).to(positive.device, dtype).unsqueeze(-1)
        return negative + w * (positive - negative)

    def aesthetic_context(self, strengths: Strengths, dtype: torch.dtype | None = None) -> torch.Tensor:
        """f_a = Z(F(f_t)), shape (..., C, d).

        With ``dtype`` the weights are cast on the fly (fp16 files are evaluated in fp32 without an fp32 copy of the
        adapter); without it the modules' own dtype is used and autograd sees the parameters directly.
        """
        dtype = dtype or self.zero_proj.weight.dtype
        f_t = self.aesthetic_tokens(strengths, dtype)
        spread = F.linear(
            f_t.transpose(-1, -2), _cast(self.token_proj.weight, dtype), _cast(self.token_proj.bias, dtype)
        )
        normed = F.layer_norm(
            spread.transpose(-1, -2),
            (self.context_dim,),
            _cast(self.norm.weight, dtype),
            _cast(self.norm.bias, dtype),
            self.norm.eps,
        )
        return F.linear(normed, _cast(self.zero_proj.weight, dtype), _cast(self.zero_proj.bias, dtype))

    def forward(self, strengths: Strengths) -> dict[str, torch.Tensor]:
        """V_a per layer; the module call, so wrappers such as DistributedDataParallel see the computation."""
        return self.aesthetic_values(strengths)

    def aesthetic_values(self, strengths: Strengths, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """V_a = W_Va·f_a for every layer, shape (..., C, inner)."""
        f_a = self.aesthetic_context(strengths, dtype)
        return {
            path: F.linear(f_a, _cast(proj.weight, f_a.dtype))
            for path, proj in zip(self.layer_paths, self.value_projs, strict=True)
        }


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Tensor.to returns the tensor itself when nothing changes, so training keeps its autograd leaf.
    return tensor.to(dtype)
