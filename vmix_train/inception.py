"""The Inception-v3 feature extractor of FID, with weights from a local safetensors file.

FID is defined on the 2048-wide pool features of the Inception-v3 graph that TensorFlow published on 2015-12-05 and
that the original FID code used. PyTorch ports of it (torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``,
pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``) store its weights under torchvision's module names, and are
pickles; convert one once with

    python -m vmix_train.evaluate --convert-inception weights-inception-2015-12-05-6726825d.pth inception.safetensors

(a one-off ``torch.load(weights_only=True)``). Everything else reads the safetensors file.

This module builds that network itself (torch-fidelity, the usual provider, cannot be installed without
torchvision): the TensorFlow graph's differences from torchvision's Inception-v3 are kept, namely average pools
that do not count padding, a max pool in the last block, TensorFlow 1's bilinear resize to 299×299 and inputs
scaled as ``(x - 128) / 128``. The distance itself is torchmetrics' (``vmix_train.metrics``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vmix_train.local_weights import convert_pickle, read_tensors

INPUT_SIZE = 299
FEATURES = 2048


class InceptionWeightsError(ValueError):
    """An Inception weights file that cannot be used; the message names the file."""


class _Conv(nn.Module):
    """Convolution without bias, batch norm (ε 0.001), ReLU; named ``conv`` and ``bn`` as in the weight files."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int | tuple[int, int], **options: object) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels_out, kernel, bias=False, **options)  # type: ignore[arg-type]
        self.bn = nn.BatchNorm2d(channels_out, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _average_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's 3×3 average pool divides by the number of pixels inside the image at the borders.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _MixedA(nn.Module):  # 35×35 blocks (Mixed_5b-d)
    def __init__(self, channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = _Conv(channels, 64, 1)
        self.branch5x5_1 = _Conv(channels, 48, 1)
        self.branch5x5_2 = _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(channels, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_average_pool(x)),
            ],
            1,
        )


class _ReductionB(nn.Module):  # 35×35 -> 17×17 (Mixed_6a)
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.branch3x3 = _Conv(channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(channels, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, 3, stride=2),
            ],
            1,
        )


class _MixedC(nn.Module):  # 17×17 blocks with factorised 7×7 convolutions (Mixed_6b-e)
    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        row, column = {"padding": (0, 3)}, {"padding": (3, 0)}
        self.branch1x1 = _Conv(channels, 192, 1)
        self.branch7x7_1 = _Conv(channels, width, 1)
        self.branch7x7_2 = _Conv(width, width, (1, 7), **row)
        self.branch7x7_3 = _Conv(width, 192, (7, 1), **column)
        self.branch7x7dbl_1 = _Conv(channels, width, 1)
        self.branch7x7dbl_2 = _Conv(width, width, (7, 1), **column)
        self.branch7x7dbl_3 = _Conv(width, width, (1, 7), **row)
        self.branch7x7dbl_4 = _Conv(width, width, (7, 1), **column)
        self.branch7x7dbl_5 = _Conv(width, 192, (1, 7), **row)
        self.branch_pool = _Conv(channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        double = x
        for step in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4):
            double = step(double)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
                self.branch7x7dbl_5(double),
                self.branch_pool(_average_pool(x)),
            ],
            1,
        )


class _ReductionD(nn.Module):  # 17×17 -> 8×8 (Mixed_7a)
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = _Conv(channels, 192, 1)
        self.branch3x3_2 = _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(channels, 192, 1)
        self.branch7x7x3_2 = _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x)))
        return torch.cat(
            [self.branch3x3_2(self.branch3x3_1(x)), self.branch7x7x3_4(seven), F.max_pool2d(x, 3, stride=2)], 1
        )


class _MixedE(nn.Module):  # 8×8 blocks with split 3×3 convolutions (Mixed_7b average-pools, Mixed_7c max-pools)
    def __init__(self, channels: int, max_pool: bool) -> None:
        super().__init__()
        row, column = {"padding": (0, 1)}, {"padding": (1, 0)}
        self.max_pool = max_pool
        self.branch1x1 = _Conv(channels, 320, 1)
        self.branch3x3_1 = _Conv(channels, 384, 1)
        self.branch3x3_2a = _Conv(384, 384, (1, 3), **row)
        self.branch3x3_2b = _Conv(384, 384, (3, 1), **column)
        self.branch3x3dbl_1 = _Conv(channels, 448, 1)
        self.branch3x3dbl_2 = _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), **row)
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), **column)
        self.branch_pool = _Conv(channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _average_pool(x)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(single),
                self.branch3x3_2b(single),
                self.branch3x3dbl_3a(double),
                self.branch3x3dbl_3b(double),
                self.branch_pool(pooled),
            ],
            1,
        )


class FidInception(nn.Module):
    """uint8 RGB images (B, 3, H, W), any size -> the (B, 2048) pool features FID is computed on."""

    num_features = FEATURES  # read by torchmetrics' FrechetInceptionDistance

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b = _MixedA(192, 32)
        self.Mixed_5c = _MixedA(256, 64)
        self.Mixed_5d = _MixedA(288, 64)
        self.Mixed_6a = _ReductionB(288)
        self.Mixed_6b = _MixedC(768, 128)
        self.Mixed_6c = _MixedC(768, 160)
        self.Mixed_6d = _MixedC(768, 160)
        self.Mixed_6e = _MixedC(768, 192)
        self.Mixed_7a = _ReductionD(768)
        self.Mixed_7b = _MixedE(1280, max_pool=False)
        self.Mixed_7c = _MixedE(2048, max_pool=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"FID's Inception takes uint8 RGB images (B, 3, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        x = resize_like_tensorflow1(images.float(), INPUT_SIZE)
        x = (x - 128) / 128
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c):
            x = block(x)
        for block in (self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))


def resize_like_tensorflow1(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W) to size × size as TensorFlow 1's ``resize_bilinear`` (align_corners False):
    output pixel i samples the input at i · (in / out), with no half-pixel shift, clamped at the last pixel."""
    return _resize_axis(_resize_axis(images, size, -2), size, -1)


def _resize_axis(x: torch.Tensor, size: int, axis: int) -> torch.Tensor:
    length = x.shape[axis]
    if length == size:
        return x
    where = torch.arange(size, dtype=torch.float64, device=x.device) * (length / size)
    low = where.floor().long().clamp(max=length - 1)
    high = (low + 1).clamp(max=length - 1)
    weight = (where - low).to(x.dtype)
    shape = [1] * x.dim()
    shape[axis] = size
    weight = weight.view(shape)
    return x.index_select(axis, low) * (1 - weight) + x.index_select(axis, high) * weight


def load_inception(path: str | Path) -> FidInception:
    """FID's Inception-v3 from a safetensors file with the published weights' names (``Conv2d_1a_3x3.conv.weight``
    ...); the classifier (``fc.*``) and batch-norm counters in the file are not needed and are ignored."""
    path = Path(path)
    tensors = read_tensors(
        path, "Inception weights", InceptionWeightsError, "python -m vmix_train.evaluate --convert-inception"
    )
    model = FidInception()
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    given = {k: v for k, v in tensors.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    missing = sorted(k for k in expected if k not in given)
    misshapen = sorted(k for k in expected if k in given and given[k].shape != expected[k].shape)
    extra = sorted(set(given) - set(expected))
    if missing or misshapen or extra:
        raise InceptionWeightsError(
            f"Inception weights {path.name} are not FID's Inception-v3 (missing: {missing[:3]}, misshapen: "
            f"{misshapen[:3]}, unexpected: {extra[:3]}); use the 2015-12-05 FID weights converted with "
            "`python -m vmix_train.evaluate --convert-inception`"
        )
    model.load_state_dict({k: v.float() for k, v in given.items()}, strict=False)
    return model.eval().requires_grad_(False)


def convert(source: str | Path, target: str | Path) -> None:
    """Convert a published ``.pth`` state dict once (see ``local_weights``)."""
    convert_pickle(source, target, load_inception, InceptionWeightsError)
