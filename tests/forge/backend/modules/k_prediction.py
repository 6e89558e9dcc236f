"""Stand-in for Forge's ``backend/modules/k_prediction.py``: the discrete (SD1/SD2/SDXL) sigma schedule."""

from __future__ import annotations

import torch


class Prediction(torch.nn.Module):
    """Mirrors ``backend/modules/k_prediction.py: Prediction`` for eps models with SD's scaled-linear betas.

    ``sigmas`` holds the 1000 training sigmas in increasing order (index = timestep).
    """

    def __init__(self, linear_start=0.00085, linear_end=0.012, timesteps=1000):
        super().__init__()
        betas = torch.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.register_buffer("alphas_cumprod", alphas_cumprod.float())
        self.register_buffer("sigmas", sigmas.float())
        self.register_buffer("log_sigmas", sigmas.log().float())

    @property
    def sigma_min(self):
        """Mirrors ``Prediction.sigma_min``."""
        return self.sigmas[0]

    @property
    def sigma_max(self):
        """Mirrors ``Prediction.sigma_max``."""
        return self.sigmas[-1]

    def timestep(self, sigma):
        """Mirrors ``Prediction.timestep``: the nearest training timestep in log-sigma."""
        distances = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return distances.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep):
        """Mirrors ``Prediction.sigma``: log-linear interpolation between training sigmas."""
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=len(self.sigmas) - 1)
        low, high, frac = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - frac) * self.log_sigmas[low] + frac * self.log_sigmas[high]).exp().to(timestep.device)

    def percent_to_sigma(self, percent):
        """Mirrors ``Prediction.percent_to_sigma``: 0 → a huge sigma, 1 → 0, else the sigma at timestep
        ``(1 - percent)·999``. This is how Forge's IP-Adapter turns start/end percent into sigma thresholds."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()
