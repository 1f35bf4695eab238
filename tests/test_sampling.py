import numpy as np

from cytoagg.io.cells import PlateCells
from cytoagg.model.sampler import BatchGatherer, SetSampler, SetSizeSchedule, cells_tensor


def plate():
    """Cell value = its own row index, so sampled values tell which cells (and wells) were drawn."""
    wells = np.array(["A01"] * 5 + ["A02"] * 3 + ["B01"] * 8 + ["B02"] * 2 + ["C01"] * 4)
    pert = np.array(["c1"] * 5 + ["c1"] * 3 + ["c2"] * 8 + ["c2"] * 2 + ["c3"] * 4)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(wells))  # cells arrive in any order; the store groups them
    x = np.arange(len(wells), dtype=np.float32)[:, None]
    return PlateCells.from_cells("P1", x[order], wells[order], pert[order])


def test_plate_cells_grouped_by_well():
    p = plate()
    assert list(p.wells) == ["A01", "A02", "B01", "B02", "C01"]
    assert list(p.counts) == [5, 3, 8, 2, 4]
    assert list(p.perturbations) == ["c1", "c1", "c2", "c2", "c3"]
    # every cell lands in its own well's slice
    for w, (a, b) in enumerate(zip(p.offsets[:-1], p.offsets[1:])):
        orig = p.x[a:b, 0].astype(int)
        expected = {"A01": range(0, 5), "A02": range(5, 8), "B01": range(8, 16), "B02": range(16, 18), "C01": range(18, 22)}
        assert set(orig) <= set(expected[p.wells[w]])


def test_set_size_schedule_even_and_above_minimum():
    rng = np.random.default_rng(1)
    sizes = [SetSizeSchedule(1500, 800, 100).draw(rng) for _ in range(500)]
    assert min(sizes) >= 100 and all(s % 2 == 0 for s in sizes)
    assert 1300 < np.mean(sizes) < 1800


def test_sampler_views_wells_and_replacement():
    p = plate()
    s = SetSampler(p, ["c1", "c2", "c3"], n_views=4)
    rng = np.random.default_rng(2)
    idx, labels = s.sample(np.array([0, 1, 2]), 40, rng)
    assert idx.shape == (12, 40)
    assert list(labels) == [0] * 4 + [1] * 4 + [2] * 4  # positives: the 4 views of one compound
    well_of_cell = p.well_index
    n_wells_used = []
    for row, lab in zip(idx, labels):
        wells = well_of_cell[row]
        assert set(p.perturbations[wells]) == {s.compounds[lab]}  # only that compound's wells
        used = np.unique(wells)
        n_wells_used.append(len(used))
        assert len(used) in (1, 2)
        # equal shares per well (n_cells // n_wells each)
        assert all(np.sum(wells == w) == 40 // len(used) for w in used)
    # c3 has one well: always one; the others use 1 or 2 wells at random
    assert set(n_wells_used[8:]) == {1}
    assert set(n_wells_used[:8]) == {1, 2}
    # with replacement: 40 cells from wells of <= 8 cells must repeat cells
    assert all(len(np.unique(row)) < 40 for row in idx)


def test_sampler_batches_drop_singletons_and_cover_compounds():
    p = plate()
    s = SetSampler(p, ["c1", "c2", "c3"], n_views=2)
    batches = s.batches(2, np.random.default_rng(0))
    assert all(len(b) >= 2 for b in batches)
    assert len(batches) == 1  # 3 compounds in batches of 2: the last batch of one has no negatives


def test_sampler_is_seeded():
    p = plate()
    s = SetSampler(p, ["c1", "c2"], n_views=4)
    a = s.sample(np.array([0, 1]), 20, np.random.default_rng(5))[0]
    b = s.sample(np.array([0, 1]), 20, np.random.default_rng(5))[0]
    np.testing.assert_array_equal(a, b)


def test_sampler_skips_compounds_absent_from_plate():
    s = SetSampler(plate(), ["c1", "zz"], n_views=2)
    assert s.compounds == ["c1"]


def test_gatherer_equals_fancy_indexing_and_alternates_buffers(tmp_path):
    """The cells a batch gets are x[idx], from an array or a read-only memory map, whatever the buffer's history."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 6)).astype(np.float32)
    np.save(tmp_path / "cells.npy", x)
    stored = np.load(tmp_path / "cells.npy", mmap_mode="r")
    g = BatchGatherer()
    cells = cells_tensor(stored)
    batches = []
    for n_cells in (10, 4, 12, 12):  # grows, shrinks, grows again
        idx = rng.integers(0, 50, (3, n_cells))
        slot, buffer = g.next_buffer(idx.size * 6)
        out = BatchGatherer.gather(cells, idx, buffer)
        g.copied(slot)  # a no-op without CUDA
        assert out.shape == (3, n_cells, 6)
        np.testing.assert_array_equal(out.numpy(), x[idx])
        batches.append((idx, out))
    # the batch before the last is still intact while the last one is gathered (prefetching)
    np.testing.assert_array_equal(batches[-2][1].numpy(), x[batches[-2][0]])
