"""Which compounds are held out from training (validation compounds)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from .settings import Settings


def _unit_hash(name: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


def compound_split(compound: str, validation: float | list[str], seed: int = 0) -> str:
    """``'train'`` or ``'validation'`` for one compound.

    ``validation`` is either an explicit list of validation compounds or a fraction. With a
    fraction, each compound is assigned by a seeded hash of its name: the split of a compound never
    changes when plates or other compounds are added (so adding a plate never silently reshuffles
    what the model was trained on); the share is the fraction on average, not exactly.
    """
    if isinstance(validation, (list, tuple, set)):
        return "validation" if compound in set(validation) else "train"
    return "validation" if _unit_hash(compound, seed) < float(validation) else "train"


def split_compounds(compounds: Iterable[str], validation: float | list[str], seed: int = 0) -> dict[str, str]:
    return {c: compound_split(c, validation, seed) for c in compounds}


@dataclass(frozen=True)
class CompoundSplit(Settings):
    """Config ``compounds:``: the held-out (validation) compounds, a list or a fraction, and the hash seed."""

    validation: float | list[str]
    seed: int

    def of(self, compounds: Iterable[str]) -> dict[str, str]:
        """``'train'`` or ``'validation'`` for each compound."""
        return split_compounds(compounds, self.validation, self.seed)
