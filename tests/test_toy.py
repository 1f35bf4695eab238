"""The model-capacity toy data, and what a set model can learn from it (issue: covariance experiments)."""

import numpy as np
import pytest
import torch

from cytoagg.io.cells import PlateCells
from cytoagg.model.cellstore import pack_cell_store
from cytoagg.io.parquet import write_profiles
from cytoagg.evaluate.average_precision import average_precision
from cytoagg.synthetic.toy import ToySpec, class_covariances, generate, validation_classes, zca_sphere
from cytoagg.model.train import train_model
from cytoagg.model.inference import embed_cells
from cytoagg.model.checkpoint import load_model
from helpers import annotation, compound_split, toy_spec, train_settings

FEATURES = ["Cells_Toy_Feature1", "Cells_Toy_Feature2"]


def test_classes_share_the_mean_and_differ_in_covariance():
    spec = toy_spec(points=2000, samples_per_class=2)
    df = generate(spec)
    means = df.groupby("Metadata_class")[FEATURES].mean()
    assert np.abs(means.to_numpy()).max() < 0.15  # all classes centred at 0
    covs = class_covariances(spec)
    assert len({tuple(np.round(c.ravel(), 3)) for c in covs}) == spec.n_classes
    for k, cov in enumerate(covs):
        sample = df[df.Metadata_class == f"class{k:02d}"][FEATURES].to_numpy()
        np.testing.assert_allclose(np.cov(sample.T), cov, atol=0.25)
    assert (df.groupby("Metadata_class").Metadata_split.first() == "validation").sum() == spec.n_classes - spec.n_train_classes


def test_rotated_classes_are_the_papers_ellipse_turned_step_by_step():
    spec = toy_spec(classes="rotated", points=4000, samples_per_class=2)
    covs = class_covariances(spec)
    for k, cov in enumerate(covs):
        vals, vecs = np.linalg.eigh(cov)
        np.testing.assert_allclose(vals, [0.25, 2.25], atol=1e-12)
        # the long axis of class 0 is the diagonal (1, 1); class k is turned by k pi / n_classes from it
        angle = np.arctan2(vecs[1, 1], vecs[0, 1]) % np.pi
        assert np.isclose(angle, (np.pi / 4 + k * np.pi / spec.n_classes) % np.pi, atol=1e-9), (k, angle)
    df = generate(spec)
    sample = df[df.Metadata_class == "class03"][FEATURES].to_numpy()
    np.testing.assert_allclose(np.cov(sample.T), covs[3], atol=0.15)
    with pytest.raises(ValueError, match="experiment.dims"):
        toy_spec(classes="rotated", dims=3)


def test_standardized_variant_leaves_only_correlation():
    df = generate(toy_spec(variant="covariance_standardized"))
    std = df.groupby("Metadata_Well")[FEATURES].std(ddof=0)
    np.testing.assert_allclose(std.to_numpy(), 1.0, atol=1e-9)


def test_zca_sphering_regularization():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 2)) @ np.array([[3.0, 0.0], [1.0, 0.3]])
    assert np.allclose(np.cov(zca_sphere(x, 1e-9).T), np.eye(2), atol=1e-6)
    # larger epsilon keeps more of the original shape
    light = np.linalg.eigvalsh(np.cov(zca_sphere(x, 0.3).T))
    assert light.max() / light.min() > 1.5


def _fit_and_score(tmp_path, spec: ToySpec, epochs: int = 60):
    df = generate(spec)
    train = df[df.Metadata_split == "train"]
    write_profiles(train, tmp_path / "train.parquet")
    ann = annotation(perturbation_col="Metadata_class", negcon_col="Metadata_class", negcon_value=None)
    pack_cell_store(tmp_path / "train.parquet", FEATURES, tmp_path / "store", "toy", ann)
    settings = train_settings(
        epochs=epochs, lr=1e-3, batch_compounds=spec.n_train_classes, cells_mean=150, cells_std=30, cells_min=50,
        cell_hidden=64, head_hidden=32, out_dim=32, eval_every=epochs, seed=1, annotation=ann,
        split=compound_split(validation=[], seed=0),
    )
    train_model([tmp_path / "store"], FEATURES, tmp_path / "m.pt", tmp_path / "l.csv", settings, threads=1)
    trained = load_model(tmp_path / "m.pt", "cpu", precision=settings.precision)
    val = df[df.Metadata_class.isin(validation_classes(spec))]
    cells = PlateCells.from_cells("toy", val[FEATURES].to_numpy(np.float32), val.Metadata_Well.to_numpy(), val.Metadata_class.to_numpy())
    learned = embed_cells(trained.network, cells, torch.device("cpu"), trained.precision)
    mean = np.add.reduceat(cells.x, cells.offsets[:-1], axis=0) / cells.counts[:, None]
    score = lambda p: average_precision(p, cells.perturbations)["average_precision"].mean()  # noqa: E731
    return score(learned), score(mean)


@pytest.mark.slow
def test_model_learns_covariance_the_mean_cannot(tmp_path):
    model_map, mean_map = _fit_and_score(tmp_path, toy_spec(points=300))
    assert mean_map < 0.5
    assert model_map > mean_map + 0.3, (model_map, mean_map)


@pytest.mark.slow
def test_heavy_sphering_leaves_nothing_to_learn(tmp_path):
    model_map, mean_map = _fit_and_score(tmp_path, toy_spec(variant="sphering", epsilon=0.01, points=300))
    assert model_map < mean_map + 0.2, (model_map, mean_map)


@pytest.mark.slow
def test_the_readmes_toy_presets_plan_one_run_per_epsilon(tmp_path):
    """The README's toy preset combinations parse and plan their toy runs (a dry run: nothing trains)."""
    import shutil

    from helpers import REPO, copy_workflow, planned_jobs

    wd = copy_workflow(tmp_path)
    shutil.copytree(REPO / "experiments", wd / "experiments")
    for presets, runs in [
        (["covariance_standardized.yaml"], 1),
        (["sphering.yaml", "sphering_paper.yaml"], 3),
        (["sphering.yaml", "sphering_rotated.yaml"], 3),
        (["sphering.yaml", "sphering_original.yaml"], 3),
    ]:
        jobs = planned_jobs(wd, configfiles=[f"experiments/{p}" for p in presets])
        assert jobs.get("toy_train") == jobs.get("toy_data") == runs, (presets, jobs)
