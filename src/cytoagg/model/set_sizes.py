"""How many cells a training set holds: drawn per step from N(mean, std) (the paper), or fixed (the mlp_on_mean
control). Free of torch, so that the config check can refuse settings that would make the draw hang without
importing it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import erf


MIN_ACCEPTANCE = 1e-3  # a set-size draw that succeeds less often than this is a settings error


def set_size_acceptance(mean: float, std: float, minimum: int) -> float:
    """The probability that one draw of ``round(N(mean, std))`` is even and at least ``minimum``."""
    if std <= 0:
        n = int(round(mean))
        return float(n >= minimum and n % 2 == 0)
    first = max(int(minimum), int(np.floor(mean - 12 * std)))
    first += first % 2
    k = np.arange(first, int(np.ceil(mean + 12 * std)) + 2, 2, dtype=np.float64)
    if not len(k):
        return 0.0
    z = lambda v: (v - mean) / (std * np.sqrt(2.0))  # noqa: E731
    return float(np.clip(0.5 * (erf(z(k + 0.5)) - erf(z(k - 0.5))), 0, 1).sum())


@dataclass(frozen=True)
class SetSizeSchedule:
    """Cells per set, redrawn after every step from N(mean, std) until >= minimum and even (the paper: 1500, 800, 100).

    Settings that make such a draw rare (e.g. std 0 and an odd or too small mean) are refused up front, so the
    draw never loops for long."""

    mean: float
    std: float
    minimum: int

    def __post_init__(self):
        p = set_size_acceptance(self.mean, self.std, self.minimum)
        if p < MIN_ACCEPTANCE:
            raise ValueError(
                f"train.cells_mean={self.mean:g}, cells_std={self.std:g} and cells_min={self.minimum} give an even set "
                f"size >= cells_min in {p:.2g} of the draws: raise cells_mean or cells_std, or lower cells_min"
            )

    def draw(self, rng: np.random.Generator) -> int:
        for _ in range(int(100 / MIN_ACCEPTANCE)):
            n = int(round(rng.normal(self.mean, self.std)))
            if n >= self.minimum and n % 2 == 0:
                return n
        raise RuntimeError(f"no set size drawn from {self}")  # pragma: no cover - probability < e^-100


@dataclass(frozen=True)
class FixedSetSize:
    """Every set of the same size (the mlp_on_mean control: a set is one well's mean profile)."""

    size: int

    def draw(self, rng: np.random.Generator) -> int:
        return self.size
