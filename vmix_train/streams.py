"""Random numbers that follow from the run's seed and a position, never from a running random state.

Each decision about one image or one epoch (its place in the order, caption dropout, the noise and timestep, the
latent drawn from the VAE's distribution) gets its own generator, seeded by a hash of (seed, kind, index). A resumed
run therefore draws exactly what the killed one would have, and the numbers do not depend on how many processes
share the work. Any seed from 0 to 2**64 - 1 works: the hash folds it into the 64 bits torch's generators take.
"""

from __future__ import annotations

import hashlib

import torch

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 0 … 2**64 - 1
SEED_RANGE = f"a whole number from 0 to {MAX_SEED}"


def derived_seed(seed: int, kind: str, index: int = 0) -> int:
    """A 64-bit seed for decision ``kind`` number ``index`` of the run seeded ``seed``: distinct inputs give
    unrelated seeds (a 64-bit BLAKE2b digest), and any size of ``seed`` or ``index`` is fine."""
    digest = hashlib.blake2b(f"vmix/{seed}/{kind}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def stream(seed: int, kind: str, index: int) -> torch.Generator:
    """A CPU generator for one decision about one image (or epoch); the same inputs always give the same numbers."""
    return torch.Generator().manual_seed(derived_seed(seed, kind, index))
