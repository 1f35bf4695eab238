"""The mAP-vs-cells-sampled sweep and the effective-rank diagnostics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import annotation, effective_rank_settings, embed_settings, evaluate_settings, model_spec, sampling_sweep_settings, splits
from cytoagg.profiles.aggregate import aggregate_plate
from cytoagg.io.cells import PlateCells, load_plate_cells
from cytoagg.evaluate.diagnostics import effective_rank_tables
from cytoagg.profiles.embed import embed_plate
from cytoagg.evaluate.retrieval import evaluate_plate
from cytoagg.model.network import DeepSets
from cytoagg.evaluate.sampling_sweep import compact_sweep, nested_samples, sampling_sweep_plate, summarize_sweep
from cytoagg.model.checkpoint import CHECKPOINT_FORMAT

ANN = annotation()


@pytest.fixture(scope="module")
def checkpoint(tiny_plates, tmp_path_factory):
    """An untrained model (random weights) in a cytoagg checkpoint: enough to test the plumbing."""
    _, features = tiny_plates
    torch.manual_seed(0)
    spec = model_spec(len(features), cell_hidden=32, head_hidden=16, out_dim=12)
    model = DeepSets(spec)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(
        {"format": CHECKPOINT_FORMAT, "model_spec": spec.to_dict(), "state_dict": model.state_dict(),
         "features": features, "normalization": {}},
        path,
    )
    return path


def toy_cells(counts, seed=0) -> PlateCells:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(sum(counts), 3)).astype(np.float32)
    x[:, 0] = np.arange(len(x))  # cell id
    wells = np.repeat([f"W{i}" for i in range(len(counts))], counts)
    return PlateCells.from_cells("P1", x, wells, np.repeat("c", len(x)))


def test_nested_samples():
    cells = toy_cells([5, 40, 12, 1])
    a = nested_samples(cells, [3, 10, 30], seed=0)
    assert sorted(a) == [3, 10, 30]
    for n, sub in a.items():
        assert sub.counts.tolist() == np.minimum(cells.counts, n).tolist()
        # every sampled cell belongs to its well, none twice
        for w in range(len(cells.wells)):
            ids = sub.x[sub.offsets[w] : sub.offsets[w + 1], 0]
            assert len(set(ids)) == len(ids)
            assert np.isin(ids, cells.x[cells.offsets[w] : cells.offsets[w + 1], 0]).all()
    for w in range(4):  # nested: the 3-cell sample is in the 10-cell sample
        small = a[3].x[a[3].offsets[w] : a[3].offsets[w + 1], 0]
        assert np.isin(small, a[10].x[a[10].offsets[w] : a[10].offsets[w + 1], 0]).all()
    again = nested_samples(cells, [10], seed=0)[10]
    np.testing.assert_array_equal(again.x, a[10].x)
    assert not np.array_equal(nested_samples(cells, [10], seed=1)[10].x, a[10].x)


def test_sweep_all_cells_equals_the_evaluate_step(tiny_plates, checkpoint, tmp_path):
    paths, features = tiny_plates
    out = tmp_path / "sweep.parquet"
    got = sampling_sweep_plate(paths["P3"], checkpoint, out, "P3", sampling_sweep_settings(sizes=[5, 20], seeds=2),
                               mean_features=features)
    assert out.exists()
    assert set(got["cells_sampled"]) == {"5", "20", "all"} and set(got["method"]) == {"model", "mean"}
    assert got.groupby(["method", "cells_sampled"])["seed"].nunique().to_dict() == {
        ("mean", "20"): 2, ("mean", "5"): 2, ("mean", "all"): 1, ("model", "20"): 2, ("model", "5"): 2, ("model", "all"): 1
    }  # fmt: skip
    assert got.loc[got.cells_sampled == "5", "n_cells_used"].max() == 5
    assert "DMSO" not in set(got["perturbation"])
    # all cells: the same APs as embed/aggregate + evaluate
    for method in ("model", "mean"):
        prof = tmp_path / f"{method}.parquet"
        if method == "model":
            embed_plate(paths["P3"], checkpoint, {"model": prof}, "P3", embed_settings(normalization={}))
        else:
            aggregate_plate(paths["P3"], features, {"mean": prof}, "P3", ANN)
        ev = evaluate_plate(prof, tmp_path / f"{method}_ap.parquet", evaluate_settings()).set_index("well")
        mine = got[(got.method == method) & (got.cells_sampled == "all")].set_index("well")
        np.testing.assert_allclose(mine["average_precision"], ev.loc[mine.index, "average_precision"], atol=1e-6)
    # the summary tables
    long, compact = summarize_sweep(got, splits({"P3": "validation"}, validation=0.25))
    assert set(long["compound_split"]) == {"train", "validation", "all"}
    assert compact["cells_sampled"].tolist()[:3] == ["5", "20", "all"]  # numeric order, all last
    assert compact.loc[compact.cells_sampled == "5", "n_seeds"].eq(2).all()
    pd.testing.assert_frame_equal(compact_sweep(long), compact)


def test_effective_rank_tables(tiny_plates, checkpoint, tmp_path):
    paths, features = tiny_plates
    summary, spectra = effective_rank_tables(
        [paths["P3"]], checkpoint, tmp_path / "er.csv", tmp_path / "spectra.csv", effective_rank_settings(),
        mean_features=features,
    )
    assert summary["representation"].tolist() == ["pooled", "head", "mean"]
    assert summary.set_index("representation")["dim"].to_dict() == {"pooled": 32, "head": 12, "mean": len(features)}
    assert (summary["effective_rank"] >= 1).all() and (summary["effective_rank"] <= summary["max_rank"]).all()
    n_wells = len(load_plate_cells(paths["P3"], features, "P3", ANN)[0].wells)
    assert summary["n_wells"].eq(n_wells).all()
    assert spectra.groupby("representation")["p"].sum().round(9).eq(1).all()
    assert (tmp_path / "er.csv").exists() and (tmp_path / "spectra.csv").exists()
