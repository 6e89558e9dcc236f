"""The LAION aesthetic predictor (improved-aesthetic-predictor): an MLP head on CLIP ViT-L/14 image embeddings.

The paper reports its score (Tables 1-3). The published head is a PyTorch pickle
(``sac+logos+ava1-l14-linearMSE.pth``); convert it once to safetensors with

    python -m vmix_train.aesthetic convert sac+logos+ava1-l14-linearMSE.pth laion-aesthetic-l14.safetensors

(``vmix_train.local_weights``, the only place this project reads a pickle). Everything else reads the
safetensors file. The head's input is the L2-normalised projected image embedding of CLIP ViT-L/14
(``openai/clip-vit-large-patch14``, 768 wide); its output is a score of roughly 1 to 10.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

from vmix_train.local_weights import conversion_command, convert_pickle, read_tensors

# The published head's layout: Linear layers at these indices of an nn.Sequential named "layers", Dropouts between.
_LINEAR_INDICES = (0, 2, 4, 6, 7)
_WIDTHS = (1024, 128, 64, 16, 1)
_DROPOUTS = {1: 0.2, 3: 0.2, 5: 0.1}


class AestheticHeadError(ValueError):
    """An aesthetic head file that cannot be used; the message names the file."""


class AestheticHead(nn.Module):
    """Linear(d,1024) Dropout Linear(1024,128) Dropout Linear(128,64) Dropout Linear(64,16) Linear(16,1)."""

    def __init__(self, embed_dim: int = 768) -> None:
        super().__init__()
        modules: list[nn.Module] = []
        width = embed_dim
        linears = iter(_WIDTHS)
        for index in range(8):
            if index in _DROPOUTS:
                modules.append(nn.Dropout(_DROPOUTS[index]))
            else:
                out = next(linears)
                modules.append(nn.Linear(width, out))
                width = out
        self.layers = nn.Sequential(*modules)
        self.embed_dim = embed_dim

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        """(B, d) L2-normalised CLIP image embeddings -> (B,) scores."""
        return self.layers(embeds).squeeze(-1)


def load_aesthetic_head(path: str | Path) -> AestheticHead:
    """The head from a safetensors file with the published state dict's keys (``layers.0.weight`` ...)."""
    path = Path(path)
    tensors = read_tensors(path, "aesthetic head", AestheticHeadError, "python -m vmix_train.aesthetic convert")
    first = tensors.get("layers.0.weight")
    if first is None or first.dim() != 2:
        raise AestheticHeadError(f"aesthetic head {path.name} has no 'layers.0.weight' matrix: not a LAION head")
    head = AestheticHead(first.shape[1])
    expected = head.state_dict()
    wrong = sorted(k for k in expected if k not in tensors or tensors[k].shape != expected[k].shape)
    extra = sorted(set(tensors) - set(expected))
    if wrong or extra:
        raise AestheticHeadError(
            f"aesthetic head {path.name} does not have the LAION head's layout "
            f"(missing or misshapen: {wrong[:3]}, unexpected: {extra[:3]})"
        )
    head.load_state_dict({k: v.float() for k, v in tensors.items()})
    return head.eval().requires_grad_(False)


def convert(source: str | Path, target: str | Path) -> None:
    """Convert the published ``.pth`` state dict once (see ``local_weights``)."""
    convert_pickle(source, target, load_aesthetic_head, AestheticHeadError)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmix_train.aesthetic", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="convert the published .pth head to .safetensors")
    conv.add_argument("source")
    conv.add_argument("target")
    args = parser.parse_args(argv)
    return conversion_command(convert, (AestheticHeadError,), args.source, args.target)


if __name__ == "__main__":
    sys.exit(main())
