import numpy as np
import pandas as pd
import pytest
import torch

from dataclasses import replace

from helpers import annotation, embed_settings, model_spec, normalization, train_settings
from cytoagg.model import sampler as sampling
from cytoagg.profiles.embed import embed_plate
from cytoagg.io.files import InputError
from cytoagg.io.parquet import read_profiles
from cytoagg.model.train import train_model
from cytoagg.model.checkpoint import load_checkpoint

SMALL = train_settings(
    epochs=4, lr=1e-3, batch_compounds=8, cells_mean=40, cells_std=10, cells_min=10,
    cell_hidden=32, head_hidden=16, out_dim=16, seed=3, eval_every=2,
)
ANN = annotation()


def pack(tmp_path, tiny_plates, plate):
    from cytoagg.model.cellstore import pack_cell_store

    paths, features = tiny_plates
    store = tmp_path / "cellstore" / plate
    if not store.exists():
        pack_cell_store(paths[plate], features, store, plate, ANN)
    return store


def train(tmp_path, tiny_plates, settings=SMALL, name="m"):
    features = tiny_plates[1]
    stores = [pack(tmp_path, tiny_plates, p) for p in ("P2", "P1")]  # any order
    out = tmp_path / name / "model.pt"
    log = tmp_path / name / "log.csv"
    result = train_model(stores, features, out, log, settings, threads=1)
    return out, log, result


def test_checkpoint_contents_and_log(tmp_path, tiny_plates):
    out, log, result = train(tmp_path, tiny_plates)
    ckpt = load_checkpoint(out)
    assert ckpt["features"] == tiny_plates[1]
    assert ckpt["train_plates"] == ["P1", "P2"]
    assert ckpt["model_spec"]["n_features"] == len(tiny_plates[1])
    hist = pd.read_csv(log)
    assert list(hist.epoch) == [0, 1, 2, 3]
    assert hist.val_mAP.notna().sum() == 2  # eval_every=2
    assert ckpt["epoch"] == result["best_epoch"]
    assert ckpt["val_mAP"] == pytest.approx(hist.val_mAP.max())
    assert not (out.parent / "resume_state.pt").exists()  # removed once training finished


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_same_seed_same_checkpoint(tmp_path, tiny_plates, precision):
    """Same seed + same precision + same machine: the same checkpoint (bf16 forced on any CPU)."""
    settings = replace(SMALL, device="cpu", precision=precision)
    a, la, _ = train(tmp_path, tiny_plates, settings, name="a")
    b, lb, _ = train(tmp_path, tiny_plates, settings, name="b")
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca["precision"] == cb["precision"] == precision
    assert ca["train_settings"]["precision"] == precision
    for k in ca["state_dict"]:
        assert torch.equal(ca["state_dict"][k], cb["state_dict"][k]), k
    log_a, log_b = (pd.read_csv(f).drop(columns=["seconds", "sampling_wait_s"]) for f in (la, lb))
    pd.testing.assert_frame_equal(log_a, log_b)
    assert set(log_a["precision"]) == {precision}
    if precision == "bf16":  # and the other arithmetic gives another model
        other = train(tmp_path, tiny_plates, replace(settings, precision="fp32"), name="fp32")[0]
        assert not torch.equal(load_checkpoint(other)["state_dict"]["cell_net.0.weight"], ca["state_dict"]["cell_net.0.weight"])


def test_resume_after_kill_gives_same_checkpoint(tmp_path, tiny_plates, monkeypatch):
    full, full_log, _ = train(tmp_path, tiny_plates, name="full")

    calls = {"n": 0}
    original = sampling.SetSampler.batches

    def dies_in_epoch_2(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # 2 plates per epoch: the 5th call is epoch 2
            raise KeyboardInterrupt("simulated kill")
        return original(self, *a, **k)

    monkeypatch.setattr(sampling.SetSampler, "batches", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path, tiny_plates, name="killed")
    assert (tmp_path / "killed" / "resume_state.pt").exists()
    assert not (tmp_path / "killed" / "model.pt").exists()
    monkeypatch.setattr(sampling.SetSampler, "batches", original)
    resumed, resumed_log, _ = train(tmp_path, tiny_plates, name="killed")
    for k, v in load_checkpoint(full)["state_dict"].items():
        assert torch.equal(v, load_checkpoint(resumed)["state_dict"][k]), k
    pd.testing.assert_frame_equal(
        pd.read_csv(full_log).drop(columns=["seconds", "sampling_wait_s"]), pd.read_csv(resumed_log).drop(columns=["seconds", "sampling_wait_s"])
    )


def test_changed_settings_do_not_resume(tmp_path, tiny_plates, caplog):
    out, _, _ = train(tmp_path, tiny_plates, name="x")
    state = out.parent / "resume_state.pt"
    torch.save({"fingerprint": "other", "epoch": 2}, state)
    with caplog.at_level("INFO"):
        train(tmp_path, tiny_plates, name="x")
    assert "ignoring" in caplog.text


def test_embed_uses_all_cells_and_checkpoint_features(tmp_path, tiny_plates):
    out, _, _ = train(tmp_path, tiny_plates)
    paths, features = tiny_plates
    embed_plate(paths["P3"], out, {"model": tmp_path / "P3.parquet"}, "P3", embed_settings())
    meta, x, _ = read_profiles(tmp_path / "P3.parquet")
    cells, _, _ = read_profiles(paths["P3"], features)
    assert len(meta) == cells["Metadata_Well"].nunique()
    assert meta["Metadata_n_cells"].astype(int).sum() == len(cells)
    assert x.shape[1] == SMALL.out_dim and np.isfinite(x).all()
    embed_plate(paths["P3"], out, {"model": tmp_path / "P3p.parquet"}, "P3", embed_settings(embedding="pooled"))
    assert read_profiles(tmp_path / "P3p.parquet")[1].shape[1] == SMALL.cell_hidden


def test_embed_streams_the_plate_and_equals_the_in_memory_profiles(tmp_path, tiny_plates, monkeypatch, caplog):
    """embed reads the plate a chunk at a time (any row order, cells with NaN left out, a well with no finite cell
    dropped): its profiles equal those of the whole plate in memory (load_plate_cells + pooled_and_head)."""
    from cytoagg.io.cells import load_plate_cells
    from cytoagg.model.checkpoint import load_model
    from cytoagg.model.inference import pooled_and_head
    from cytoagg.profiles import embed as embed_module

    out, _, _ = train(tmp_path, tiny_plates)
    paths, features = tiny_plates
    df = pd.read_parquet(paths["P3"]).sample(frac=1.0, random_state=0).reset_index(drop=True)  # wells interleaved
    wells = sorted(df["Metadata_Well"].unique())
    df.loc[df.index[:5], features[0]] = np.nan
    df.loc[df["Metadata_Well"] == wells[3], features[1]] = np.inf  # no finite cell left: the well disappears
    plate = tmp_path / "shuffled.parquet"
    df.to_parquet(plate)
    monkeypatch.setattr(embed_module, "CHUNK_CELLS", 37)  # many chunks, each with cells of several wells
    with caplog.at_level("WARNING"):
        embed_plate(plate, out, {"model": tmp_path / "s.parquet"}, "P3", embed_settings())
    assert "dropped" in caplog.text
    meta, x, _ = read_profiles(tmp_path / "s.parquet")
    assert wells[3] not in set(meta["Metadata_Well"]) and len(meta) == len(wells) - 1
    cells, expected_meta, _ = load_plate_cells(plate, features, "P3", ANN)
    trained = load_model(out, "cpu", 1, "fp32")
    _, head = pooled_and_head(trained.network, cells, trained.device, "fp32")
    pd.testing.assert_frame_equal(meta.reset_index(drop=True), expected_meta.reset_index(drop=True))
    np.testing.assert_allclose(x, head, rtol=1e-5, atol=1e-6)


def test_embed_missing_feature_is_clear_error(tmp_path, tiny_plates):
    out, _, _ = train(tmp_path, tiny_plates)
    paths, features = tiny_plates
    df = pd.read_parquet(paths["P3"]).drop(columns=[features[0]])
    bad = tmp_path / "bad.parquet"
    df.to_parquet(bad)
    with pytest.raises(InputError, match=features[0]):
        embed_plate(bad, out, {"model": tmp_path / "o.parquet"}, "P3", embed_settings())
    assert not (tmp_path / "o.parquet").exists()


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_text("nope")
    with pytest.raises(InputError, match="x.pt"):
        load_checkpoint(bad)


def test_cell_store_round_trip(tmp_path, tiny_plates):
    from cytoagg.io.cells import load_plate_cells
    from cytoagg.model.cellstore import open_cell_store, pack_cell_store

    paths, features = tiny_plates
    summary = pack_cell_store(paths["P1"], features, tmp_path / "store", "P1", ANN)
    stored, wells = open_cell_store(tmp_path / "store", ANN)
    assert stored.plate == "P1"
    direct, direct_wells, _ = load_plate_cells(paths["P1"], features, "P1", ANN)
    assert isinstance(stored.x, np.memmap) and not stored.x.flags.writeable
    np.testing.assert_array_equal(np.asarray(stored.x), direct.x)
    np.testing.assert_array_equal(stored.offsets, direct.offsets)
    np.testing.assert_array_equal(stored.perturbations, direct.perturbations)
    pd.testing.assert_frame_equal(wells, direct_wells)
    assert summary["n_cells"] == len(direct.x)


def test_training_plate_width_must_match_feature_list(tmp_path, tiny_plates):
    paths, features = tiny_plates
    with pytest.raises(InputError, match="features packed"):
        from cytoagg.model.cellstore import pack_cell_store

        pack_cell_store(paths["P1"], features, tmp_path / "a", "P1", ANN)
        train_model([tmp_path / "a"], features[:-1], tmp_path / "m.pt", tmp_path / "l.csv", SMALL)


@pytest.mark.parametrize(
    "option",
    [{"pooling": "mean"}, {"head": "batchnorm"}, {"loss": "triplet", "margin": 0.3}, {"loss": "supcon", "temperature": 0.5}],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_each_option_trains(tmp_path, tiny_plates, option):
    out, log, _ = train(tmp_path, tiny_plates, settings=replace(SMALL, epochs=2, **option))
    ckpt = load_checkpoint(out)
    for key, value in option.items():
        assert ckpt["train_settings"][key] == value
        if key in ckpt["model_spec"]:
            assert ckpt["model_spec"][key] == value
    assert np.isfinite(pd.read_csv(log).loss).all()


def test_early_stopping_on_validation_map(tmp_path, tiny_plates):
    # lr = 0: the model never changes, so validation mAP never improves after the first evaluation.
    _, log, result = train(tmp_path, tiny_plates, settings=replace(SMALL, epochs=20, lr=0.0, eval_every=1, patience=2))
    assert result["epochs_run"] == 3 and len(pd.read_csv(log)) == 3


def test_checkpoint_trained_on_another_normalization_is_refused(tmp_path, tiny_plates):
    paths, _ = tiny_plates
    out, _, _ = train(tmp_path, tiny_plates, settings=replace(SMALL, normalization=normalization(method="standardize")))
    with pytest.raises(InputError, match="standardize"):
        embed_plate(paths["P3"], out, {"model": tmp_path / "o.parquet"}, "P3", embed_settings(normalization=normalization()))
    embed_plate(paths["P3"], out, {"model": tmp_path / "o.parquet"}, "P3",
                embed_settings(normalization=normalization(method="standardize")))
    assert (tmp_path / "o.parquet").exists()


def test_one_trainer_at_a_time_per_model_folder(tmp_path, caplog):
    """A second holder of the training lock waits until the first lets go, and says why it waits."""
    import threading
    import time

    from cytoagg.io.files import exclusive_lock

    lock = tmp_path / "model" / ".train.lock"
    events = []
    first_in = threading.Event()

    def first():
        with exclusive_lock(lock):
            first_in.set()
            time.sleep(0.5)
            events.append("first done")

    t = threading.Thread(target=first)
    t.start()
    first_in.wait()
    with exclusive_lock(lock):  # another open file description: blocks like another process would
        events.append("second in")
    t.join()
    assert events == ["first done", "second in"]
    assert "held by another process" in caplog.text
    with exclusive_lock(lock):  # released: no wait, no warning
        pass


def test_device_resident_cells_give_the_same_epoch(tmp_path):
    """Batches gathered from cells held as a tensor (the GPU path, here on the CPU) equal the host path's."""
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from cytoagg.io.cells import PlateCells
    from cytoagg.model.loss import supcon_loss
    from cytoagg.model.network import DeepSets
    from cytoagg.model.sampler import SetSampler, SetSizeSchedule
    from cytoagg.model.train import _run_epoch

    rng = np.random.default_rng(0)
    wells = np.repeat([f"W{i:02d}" for i in range(24)], 30)
    compounds = np.repeat([f"C{i}" for i in range(6)], 4 * 30)
    plates = [PlateCells.from_cells(f"P{j}", rng.standard_normal((len(wells), 7)).astype(np.float32), wells, compounds) for j in (1, 2)]
    samplers = [SetSampler(p, [f"C{i}" for i in range(6)], n_views=4) for p in plates]
    losses = []
    for resident in (None, [torch.from_numpy(p.x) for p in plates]):
        torch.manual_seed(0)
        model = DeepSets(model_spec(7, cell_hidden=16, head_hidden=8, out_dim=8))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        with ThreadPoolExecutor(1) as pool:
            got, _ = _run_epoch(model, opt, supcon_loss, {}, plates, samplers, SetSizeSchedule(20, 6, 4),
                                SimpleNamespace(batch_compounds=3), np.random.default_rng(1), torch.device("cpu"), pool, resident,
                                precision="fp32")
        losses.append(got)
    assert len(losses[0]) == 4 and losses[0] == losses[1]


def test_lock_on_a_file_system_without_flock_goes_on_unlocked(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    from cytoagg.io.files import exclusive_lock

    def no_flock(*a):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    ran = []
    with exclusive_lock(tmp_path / ".train.lock"):
        ran.append(True)
    assert ran and "cannot lock on this file system" in caplog.text


SECOND_ORDER = dict(
    pooling="meancov", cell_activation="none", cell_hidden="auto", init="pca_negcon", cell_lr=0.0,
    plate_norm="negcon_mad", head="parts", part_lr=0.03, temperature=0.2,
)


def test_second_order_model_trains_and_embeds_against_negative_controls(tmp_path, tiny_plates):
    out, log, _ = train(tmp_path, tiny_plates, settings=replace(SMALL, **SECOND_ORDER), name="so")
    ckpt = load_checkpoint(out)
    k = ckpt["model_spec"]["cell_hidden"]
    assert ckpt["train_settings"]["cell_hidden"] == "auto" and 1 <= k <= len(tiny_plates[1])
    assert np.isfinite(pd.read_csv(log).loss).all()
    # cell_lr 0: the per-cell layer is still the negative controls' principal axes it started as; the head learned
    init, final = ckpt["initial_state_dict"], ckpt["state_dict"]
    assert torch.equal(init["cell_net.0.weight"], final["cell_net.0.weight"])
    assert not torch.equal(init["part_log_weight"], final["part_log_weight"])
    paths, _ = tiny_plates
    outputs = {"model": tmp_path / "so.parquet", "model_untrained": tmp_path / "so0.parquet"}
    embed_plate(paths["P3"], out, outputs, "P3", embed_settings())
    _, x, _ = read_profiles(outputs["model"])
    _, x0, _ = read_profiles(outputs["model_untrained"])
    assert x.shape == x0.shape and x.shape[1] == k + k * (k + 1) // 2 and np.isfinite(x).all()
    # the untrained control is the network training started from: the same PCA projection, the initial head
    from cytoagg.model.checkpoint import untrained_network

    untrained = untrained_network(ckpt, torch.device("cpu"))
    assert torch.equal(untrained.cell_net[0].weight, init["cell_net.0.weight"])
    assert torch.equal(untrained.part_log_weight, init["part_log_weight"])
    assert not np.allclose(x, x0)
    no_negcon = embed_settings(annotation=annotation(negcon_value=None))
    with pytest.raises(InputError, match="negative controls"):
        embed_plate(paths["P3"], out, {"model": tmp_path / "no.parquet"}, "P3", no_negcon)


def test_parallel_analysis_finds_the_planted_rank():
    from cytoagg.model.negcon import parallel_analysis

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 5)) @ rng.normal(size=(5, 30)) + 0.3 * rng.normal(size=(3000, 30))
    assert parallel_analysis(x) == 5
