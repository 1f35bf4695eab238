"""The CytoSummaryNet set sampler: drawing a batch of sets is index arithmetic on a plate's cell store."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ..io.cells import PlateCells
from .set_sizes import FixedSetSize, SetSizeSchedule  # noqa: F401  (the training loop's set sizes)


class SetSampler:
    """Draws batches of sets from one plate's training compounds.

    One training item is one compound; it yields ``n_views`` sets, each taking 1 or 2 of the
    compound's wells at random and ``n_cells // n_wells`` cells from each, with replacement.
    Positives are sets of the same compound (on the same plate, since a batch is one plate).
    """

    def __init__(self, plate: PlateCells, compounds: list[str], n_views: int = 4, max_wells_per_set: int = 2):
        self.plate = plate
        self.n_views = n_views
        self.max_wells_per_set = max_wells_per_set
        wells_of = {c: np.flatnonzero(plate.perturbations == c) for c in compounds}
        self.compounds = [c for c in compounds if len(wells_of[c]) > 0]
        width = max((len(wells_of[c]) for c in self.compounds), default=1)
        # Compound k's wells are table[k, :n_wells[k]]: a rectangular table keeps the draw vectorized.
        self.n_wells = np.array([len(wells_of[c]) for c in self.compounds], dtype=np.int64)
        self.table = np.zeros((len(self.compounds), width), dtype=np.int64)
        for k, c in enumerate(self.compounds):
            self.table[k, : len(wells_of[c])] = wells_of[c]
        self.starts = plate.offsets[:-1]
        self.counts = plate.counts

    def batches(self, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
        """The plate's compounds (indices) shuffled into batches; a last batch of 1 is dropped (no negatives)."""
        order = rng.permutation(len(self.compounds))
        chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        return [c for c in chunks if len(c) >= 2]

    def sample(self, compound_idx: np.ndarray, n_cells: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Cell indices (n_sets, n_cells) into ``plate.x`` and the set labels (n_sets,)."""
        labels = np.repeat(compound_idx, self.n_views)
        n_avail = self.n_wells[labels]
        n_sets = len(labels)
        n_use = np.minimum(rng.integers(1, self.max_wells_per_set + 1, n_sets), n_avail)
        # Pick n_use distinct wells per set: the first n_use of a random permutation of the compound's wells.
        keys = rng.random((n_sets, self.table.shape[1]))
        keys[np.arange(self.table.shape[1])[None, :] >= n_avail[:, None]] = np.inf
        picked = np.take_along_axis(self.table[labels], np.argsort(keys, axis=1), axis=1)
        # Cell slot j of a set belongs to well slot (j * n_use) // n_cells: equal shares per well.
        slot = (np.arange(n_cells)[None, :] * n_use[:, None]) // n_cells
        well = np.take_along_axis(picked, slot, axis=1)
        offset = np.floor(rng.random((n_sets, n_cells)) * self.counts[well]).astype(np.int64)
        return self.starts[well] + offset, labels


def cells_tensor(x: np.ndarray) -> torch.Tensor:
    """A plate's cells (float32, a read-only memory map too) as a tensor sharing their memory, for gathering.

    Call it in the main thread: it silences torch's warning about read-only arrays (only read here),
    and warning filters are process-wide.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(x, dtype=np.float32))


class BatchGatherer:
    """Copies a batch's cells (``cells[idx]``) into one of two reused buffers, alternating.

    Two: the step computing reads one while the next step's cells are gathered into the other (a
    prefetching thread). Reuse matters: a fresh 400 MB array per step costs more in page faults than
    the copy itself. Buffers grow to the largest batch seen. ``pin``: page-locked, for copies to a GPU;
    then call :meth:`copied` after a buffer's copy is queued, so that the buffer is not refilled before
    that copy has run.
    """

    def __init__(self, pin: bool = False):
        self.pin = pin
        self._buffers: list[torch.Tensor | None] = [None, None]
        self._copies: list = [None, None]
        self._turn = 0

    def next_buffer(self, n_values: int) -> tuple[int, torch.Tensor]:
        """Claim the next buffer (its slot and a view of ``n_values``); call in submission order (the main thread)."""
        k, self._turn = self._turn, 1 - self._turn
        if self._copies[k] is not None:  # its last batch's copy to the GPU must be done before it is refilled
            self._copies[k].synchronize()
            self._copies[k] = None
        buf = self._buffers[k]
        if buf is None or buf.numel() < n_values:
            buf = self._buffers[k] = torch.empty(n_values, dtype=torch.float32, pin_memory=self.pin)
        return k, buf[:n_values]

    def copied(self, slot: int) -> None:
        """An asynchronous copy out of buffer ``slot`` has just been queued (CUDA): remember when it is done."""
        if self.pin and torch.cuda.is_available():
            event = torch.cuda.Event()
            event.record()
            self._copies[slot] = event

    @staticmethod
    def gather(cells: torch.Tensor, idx: np.ndarray, buffer: torch.Tensor) -> torch.Tensor:
        """(n_sets, n_cells) indices into ``cells`` (cells x features, see :func:`cells_tensor`) -> (n_sets, n_cells, features)."""
        out = buffer.view(idx.size, cells.shape[1])
        torch.index_select(cells, 0, torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64).ravel()), out=out)
        return out.view(*idx.shape, cells.shape[1])
