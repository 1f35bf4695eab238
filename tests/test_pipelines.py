"""Profile pipelines against pycytominer, the mean_cov baseline, the model's controls, the verdict, and the
training yardstick (issue: the field's profile pipelines, controls and a verdict)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cytoagg.io.parquet import read_profiles, write_profiles
from cytoagg.profiles.pipelines import (
    PipelineSettings,
    SpheringSettings,
    fit_sphering_step,
    harmony_step,
    negcon_mad,
    pipeline_file,
    plate_pipelines,
    profile_key,
    split_key,
)
from helpers import annotation

pycytominer = pytest.importorskip("pycytominer")

FEATURES = [f"Cells_F{i}" for i in range(6)]
ANN = annotation()


def well_profiles(plate: str, seed: int, n_compounds: int = 20, negcon: int = 16, shift: float = 0.0) -> pd.DataFrame:
    """A plate's well profiles: compounds x 2 replicates + DMSO wells, features on different scales."""
    rng = np.random.default_rng(seed)
    perturbations = [f"c{i}" for i in range(n_compounds) for _ in range(2)] + ["DMSO"] * negcon
    effects = {f"c{i}": rng.normal(0, 1, len(FEATURES)) for i in range(n_compounds)}
    x = np.array([effects.get(p, np.zeros(len(FEATURES))) for p in perturbations])
    x = (x + rng.normal(0, 0.5, x.shape)) * np.linspace(0.5, 20, len(FEATURES)) + shift
    df = pd.DataFrame(x, columns=FEATURES)
    df.insert(0, "Metadata_Plate", plate)
    df.insert(1, "Metadata_Well", [f"W{i:03d}" for i in range(len(df))])
    df.insert(2, "Metadata_broad_sample", perturbations)
    return df


def settings(pipelines=("raw", "negcon_mad", "negcon_mad_sphere"), method="ZCA", epsilon=1e-6) -> PipelineSettings:
    return PipelineSettings(annotation=ANN, pipelines=list(pipelines), sphering=SpheringSettings(method, epsilon))


def test_profile_keys_round_trip():
    assert split_key(profile_key("mean_std", "negcon_mad_sphere")) == ("mean_std", "negcon_mad_sphere")
    assert split_key(profile_key("model_untrained", "raw")) == ("model_untrained", "raw")


def test_negcon_mad_equals_pycytominer(tmp_path):
    df = well_profiles("P1", 0)
    df.loc[df.Metadata_broad_sample == "DMSO", "Cells_F0"] = 3.0  # no spread on the controls
    meta, x = df.filter(like="Metadata_"), df[FEATURES].to_numpy()
    got = negcon_mad(meta, x, ANN, "P1")
    ref = pycytominer.normalize(df, features=FEATURES, meta_features=list(meta.columns), method="mad_robustize",
                                samples="Metadata_broad_sample == 'DMSO'")
    np.testing.assert_allclose(got[:, 1:], ref[FEATURES[1:]].to_numpy(), rtol=1e-6, atol=1e-6)
    assert (got[:, 0] == 0).all()  # pycytominer divides by 1e-18 here


@pytest.mark.parametrize("method", ["ZCA", "PCA", "ZCA-cor", "PCA-cor"])
def test_sphering_fit_on_training_controls_equals_pycytominer(tmp_path, method):
    from pycytominer.operations.transform import Spherize

    train = [well_profiles("P1", 1), well_profiles("P2", 2, shift=3.0)]
    held_out = well_profiles("P3", 3, shift=-2.0)
    files = {}
    for df in [*train, held_out]:
        files[df.Metadata_Plate[0]] = tmp_path / f"{df.Metadata_Plate[0]}.parquet"
        write_profiles(df, files[df.Metadata_Plate[0]])
    fit = tmp_path / "sphering.npz"
    s = settings(method=method, epsilon=1e-3)
    fit_sphering_step({"mean": [files["P1"], files["P2"]]}, fit, s)
    folder = tmp_path / "P3_pipelines"
    assert plate_pipelines({"mean": files["P3"]}, folder, fit, s) == ["mean__negcon_mad", "mean__negcon_mad_sphere"]
    assert sorted(f.name for f in folder.iterdir()) == ["mean__negcon_mad.parquet", "mean__negcon_mad_sphere.parquet"]
    # pycytominer: negcon_mad per plate, Spherize fit on the training plates' control wells, applied to P3
    normalized = [pycytominer.normalize(df, features=FEATURES, meta_features=list(df.filter(like="Metadata_").columns),
                                        method="mad_robustize", samples="Metadata_broad_sample == 'DMSO'")
                  for df in [*train, held_out]]
    controls = pd.concat([n[n.Metadata_broad_sample == "DMSO"][FEATURES] for n in normalized[:2]])
    sphere = Spherize(epsilon=1e-3, method=method).fit(controls)
    ref = sphere.transform(normalized[2][FEATURES]).to_numpy()
    _, got, names = read_profiles(pipeline_file(folder, "mean", "negcon_mad_sphere"))
    if method.startswith("PCA"):  # a principal axis has no sign: align pycytominer's to ours
        ref = ref * np.sign((ref * got).sum(axis=0))
        assert names == [f"PC{i}" for i in range(1, len(FEATURES) + 1)]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
    _, nm, _ = read_profiles(pipeline_file(folder, "mean", "negcon_mad"))
    np.testing.assert_allclose(nm, normalized[2][FEATURES].to_numpy(), rtol=1e-6, atol=1e-5)


def test_pipelines_need_negative_controls(tmp_path):
    df = well_profiles("P1", 0, negcon=1)
    write_profiles(df, tmp_path / "P1.parquet")
    with pytest.raises(Exception, match="1 negative-control well.*at least 2"):
        plate_pipelines({"mean": tmp_path / "P1.parquet"}, tmp_path / "o", None, settings(pipelines=["negcon_mad"]))
    assert not (tmp_path / "o").exists()  # no half-written folder


def test_harmony_runs_over_the_plates_of_a_split(tmp_path):
    pytest.importorskip("harmonypy")
    files = []
    for i, shift in enumerate((0.0, 5.0, -5.0)):
        files.append(tmp_path / f"P{i}.parquet")
        write_profiles(well_profiles(f"P{i}", 10 + i, shift=shift), files[-1])
    outs = [tmp_path / f"h{i}.parquet" for i in range(3)]
    harmony_step({"mean": files}, {"mean": outs}, settings(pipelines=("raw", "harmony")))
    for out, path in zip(outs, files):
        meta, z, names = read_profiles(out)
        assert len(meta) == len(read_profiles(path)[0]) and names[0] == "harmony_1" and np.isfinite(z).all()


# ------------------------------------------------------------------------------------------ mean_cov


def test_mean_cov_is_the_mean_and_the_within_well_covariance():
    from cytoagg.io.cells import PlateCells
    from cytoagg.profiles.aggregate import aggregate_cells

    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    cells = PlateCells.from_cells("P1", x, np.repeat(["A01", "A02", "A03"], [10, 15, 5]), np.repeat(["a", "b", "c"], [10, 15, 5]))
    features = ["Cells_a", "Cells_b", "Cells_c", "Cells_d"]
    got = aggregate_cells(cells, features, "mean_cov", covariance=["Cells_a", "Cells_c", "Cells_d"])
    assert list(got.columns[:4]) == features and got.shape[1] == 4 + 6
    for w, (a, b) in enumerate([(0, 10), (10, 25), (25, 30)]):
        cov = np.cov(x[a:b][:, [0, 2, 3]].astype(np.float64), rowvar=False, ddof=0)
        np.testing.assert_allclose(got.iloc[w, 4:].to_numpy(float), cov[np.triu_indices(3)], rtol=1e-9)
        np.testing.assert_allclose(got.iloc[w, :4].to_numpy(float), x[a:b].astype(np.float64).mean(axis=0), rtol=1e-9)
    assert got.columns[5] == "Cells_a__cov__Cells_c"


# ------------------------------------------------------------------------------------------ controls


def test_untrained_control_is_the_network_training_started_from(tmp_path, tiny_plates):
    from cytoagg.model.cellstore import pack_cell_store
    from cytoagg.model.checkpoint import load_checkpoint, untrained_network
    from cytoagg.model.network import DeepSets
    from cytoagg.model.train import train_model
    from helpers import train_settings

    paths, features = tiny_plates
    stores = [tmp_path / p for p in ("P1", "P2")]
    for p, store in zip(("P1", "P2"), stores):
        pack_cell_store(paths[p], features, store, p, ANN)
    settings_ = train_settings(epochs=1, batch_compounds=8, cells_mean=40, cells_std=10, cells_min=10, cell_hidden=16,
                               head_hidden=8, out_dim=8, seed=11)
    train_model(stores, features, tmp_path / "model.pt", tmp_path / "log.csv", settings_)
    payload = load_checkpoint(tmp_path / "model.pt")
    torch.manual_seed(11)
    init = DeepSets(settings_.model_spec(len(features)))
    untrained = untrained_network(payload, torch.device("cpu"))
    for (k, a), b in zip(init.state_dict().items(), untrained.state_dict().values()):
        assert torch.equal(a, b), k
    assert any(not torch.equal(a, b) for a, b in zip(init.state_dict().values(), payload["state_dict"].values()))


def test_mlp_on_mean_is_trained_on_well_means_and_applied_to_them(tmp_path, tiny_plates):
    from cytoagg.io.cells import load_plate_cells
    from cytoagg.model.checkpoint import load_model
    from cytoagg.model.train import means_as_cells, train_on_means
    from cytoagg.profiles.aggregate import aggregate_plate
    from cytoagg.profiles.embed import embed_plate
    from helpers import embed_settings, train_settings

    paths, features = tiny_plates
    means = {}
    for p in ("P1", "P2", "P3"):
        means[p] = tmp_path / f"mean_{p}.parquet"
        aggregate_plate(paths[p], features, {"mean": means[p]}, p, ANN)
    plate, _ = means_as_cells(means["P1"], ANN)
    assert (plate.counts == 1).all()  # one "cell" per well: its mean; it never sees a single cell
    settings_ = train_settings(epochs=2, batch_compounds=8, cell_hidden=16, head_hidden=8, out_dim=8, seed=5)
    result = train_on_means([means["P1"], means["P2"]], tmp_path / "mlp" / "model.pt", tmp_path / "mlp" / "log.csv",
                            settings_)
    assert result["epochs_run"] == 2
    control = load_model(tmp_path / "mlp" / "model.pt")
    assert control.payload["input"] == "well_means"
    # embed applies it to each well's mean profile, computed from the cells as the mean baseline does
    from cytoagg.model.cellstore import pack_cell_store
    from cytoagg.model.train import train_model

    pack_cell_store(paths["P1"], features, tmp_path / "store", "P1", ANN)
    model_settings = train_settings(epochs=1, batch_compounds=8, cells_mean=40, cells_std=10, cells_min=10,
                                    cell_hidden=16, head_hidden=8, out_dim=8)
    train_model([tmp_path / "store"], features, tmp_path / "model.pt", tmp_path / "log.csv", model_settings)
    outputs = {n: tmp_path / f"{n}.parquet" for n in ("model", "model_untrained", "mlp_on_mean")}
    embed_plate(paths["P3"], tmp_path / "model.pt", outputs, "P3", embed_settings(), mlp_on_mean=tmp_path / "mlp" / "model.pt")
    meta, got, _ = read_profiles(outputs["mlp_on_mean"])
    mean_meta, mean_x, _ = read_profiles(means["P3"])
    with torch.no_grad():
        by_hand = control.network(torch.from_numpy(mean_x)[:, None, :]).numpy()
    order = pd.Index(mean_meta.Metadata_Well).get_indexer(meta.Metadata_Well)
    np.testing.assert_allclose(got, by_hand[order], rtol=1e-5, atol=1e-6)
    assert len(load_plate_cells(paths["P3"], features, "P3", ANN)[0].wells) == len(meta)


# ------------------------------------------------------------------------------------------ training yardstick


def test_training_selection_ranks_against_every_non_control_well():
    """The per-epoch validation mAP ranks each query against all non-control wells of its plate, as the tables do."""
    from cytoagg.evaluate.average_precision import average_precision
    from cytoagg.io.cells import PlateCells
    from cytoagg.model.train import NEGCON, _split_maps

    class Fixed(torch.nn.Module):  # "embeds" each well as its cells' first row
        needs_negcon = False

        def pool_wells(self, x, well_index, n_wells):
            out = torch.zeros(n_wells, x.shape[1])
            out.index_copy_(0, torch.as_tensor(well_index), torch.as_tensor(np.asarray(x)))
            return out

        def project(self, pooled, stats=None):
            return pooled

    rng = np.random.default_rng(0)
    labels = np.array(["v1", "v1", "v2", "v2", "t1", "t1", "t2", "t2", NEGCON, NEGCON])
    x = rng.normal(size=(len(labels), 5)).astype(np.float32)
    plate = PlateCells("P1", x, np.arange(len(labels) + 1), np.array([f"W{i}" for i in range(len(labels))]), labels)
    maps = _split_maps(Fixed(), [plate], {"validation": {"v1", "v2"}, "train": {"t1", "t2"}}, torch.device("cpu"), "fp32")
    treated = labels != NEGCON
    ap = average_precision(x[treated], labels[treated], query_mask=np.isin(labels[treated], ["v1", "v2"]))
    expected = ap.assign(c=labels[treated][ap.index]).groupby("c")["average_precision"].mean().mean()
    assert maps["validation"] == pytest.approx(expected)
    alone = average_precision(x[:4], labels[:4])  # the old yardstick: the split's wells only
    assert maps["validation"] != pytest.approx(alone.assign(c=labels[:4]).groupby("c")["average_precision"].mean().mean())


# ------------------------------------------------------------------------------------------ verdict


def test_verdict_picks_the_best_non_learned_profile_and_tests_the_model_against_it():
    from cytoagg.evaluate.summarize import map_per_plate, verdict_table
    from helpers import splits

    rng = np.random.default_rng(0)
    rows = []
    for plate, split in (("P1", "train"), ("P2", "validation")):
        for well in range(40):
            compound = f"c{well // 2:02d}"
            base = rng.uniform(0.2, 0.6)
            for method, pipeline, ap in (("mean", "raw", base), ("mean", "negcon_mad", base + 0.2),
                                         ("mean_std", "raw", base + 0.1), ("model", "raw", base + 0.15),
                                         ("model", "negcon_mad", base + 0.25), ("model_untrained", "raw", base - 0.1)):
                rows.append(dict(plate=plate, well=f"W{well}", perturbation=compound, method=method,
                                 profile_pipeline=pipeline, average_precision=min(ap, 1.0), precision_at_r=0.5,
                                 n_positives=1, n_candidates=39))
    ap = pd.DataFrame(rows)
    s = splits({"P1": "train", "P2": "validation"}, validation=[f"c{i:02d}" for i in range(10)], seed=0)
    long = map_per_plate(ap, s)
    verdict = verdict_table(long, ap, s).set_index(["plate_split", "compound_split"])
    cell = verdict.loc[("validation", "validation")]
    assert (cell.best_nonlearned, cell.best_nonlearned_pipeline) == ("mean", "negcon_mad")
    assert cell.model_pipeline == "negcon_mad" and cell.ratio > 1 and cell.wilcoxon_p < 0.05
    assert cell.verdict == "model better" and cell.n_queries == 20
    assert cell.model_untrained_pipeline == "raw"
