"""train.precision: what ``auto`` picks (flags and timed probe, monkeypatched), the bf16 arithmetic of the model on
the CPU (float32 sums and gradients), and the precision recorded beside the model's outputs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from cytoagg.evaluate.retrieval import evaluate_profiles
from cytoagg.evaluate.summarize import precision_note
from cytoagg.io.files import InputError
from cytoagg.io.parquet import provenance, read_profiles
from cytoagg.model import precision as P
from cytoagg.model.cellstore import pack_cell_store
from cytoagg.model.checkpoint import load_checkpoint
from cytoagg.model.network import DeepSets, SetPooledLayer
from cytoagg.model.train import train_model
from cytoagg.profiles.embed import embed_plate
from helpers import REPO, annotation, embed_settings, evaluate_settings, model_spec, train_settings

CPU = torch.device("cpu")
BF16 = torch.autocast("cpu", dtype=torch.bfloat16)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_check.sh runs it)")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


@pytest.fixture
def fresh_check():
    """``auto``'s CPU check is cached per process: start and leave with an empty cache."""
    P.cpu_bf16_check.cache_clear()
    yield
    P.cpu_bf16_check.cache_clear()


def test_explicit_settings_and_unknown_ones():
    assert P.resolve_precision("fp32", CPU) == "fp32"
    assert P.resolve_precision("bf16", CPU) == "bf16"
    assert P.resolve_precision("auto", torch.device("cuda")) == "bf16"  # CUDA keeps its bf16 path
    assert P.resolve_precision("fp32", torch.device("cuda")) == "fp32"
    with pytest.raises(InputError, match="train.precision"):
        P.resolve_precision("fp16", CPU)


def test_cpu_flags_of_x86_and_arm(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f amx_bf16 amx_tile\n\nprocessor\t: 1\nflags\t: fpu\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert "amx_bf16" in P.cpu_flags(str(x86)) and "avx2" in P.cpu_flags(str(x86))
    assert "bf16" in P.cpu_flags(str(arm))
    assert P.cpu_flags(str(tmp_path / "absent")) is None


def test_auto_without_bf16_flags_is_fp32_and_times_nothing(monkeypatch, fresh_check, caplog):
    monkeypatch.setattr(P, "cpu_flags", lambda: {"fpu", "avx2", "avx512f"})
    monkeypatch.setattr(P, "_probe", lambda shape: pytest.fail("probed a CPU without bf16 flags"))
    with caplog.at_level("INFO"):
        assert P.resolve_precision("auto", CPU) == "fp32"
    assert "fp32" in caplog.text and "amx_bf16" in caplog.text


@pytest.mark.parametrize(
    "flags, gflops, expected",
    [
        ({"amx_bf16", "avx512_bf16"}, (117.0, 465.0), "bf16"),  # the AMX machine: 4x
        ({"avx512_bf16"}, (100.0, 110.0), "fp32"),  # flags, but not measurably faster
        (None, (50.0, 150.0), "bf16"),  # no readable flags: the probe decides
        (None, (50.0, 0.5), "fp32"),
    ],
)
def test_auto_follows_the_timed_probe(monkeypatch, fresh_check, caplog, flags, gflops, expected):
    calls = []
    monkeypatch.setattr(P, "cpu_flags", lambda: flags)
    monkeypatch.setattr(P, "_probe", lambda shape: calls.append(shape) or gflops)
    with caplog.at_level("INFO"):
        assert P.resolve_precision("auto", CPU) == expected
        assert P.resolve_precision("auto", CPU) == expected
    assert calls == [P.PROBE_SHAPE]  # once per process
    assert f"fp32 {gflops[0]:.1f}, bf16 {gflops[1]:.1f} GFLOP/s" in caplog.text


def test_probe_skips_the_large_product_where_bf16_is_emulated(monkeypatch):
    timed = []

    def fake(m, k, n, dtype, repeats=3, device="cpu"):
        timed.append((m, k, n))
        return 30.0 if dtype == torch.float32 else 0.5

    monkeypatch.setattr(P, "matmul_gflops", fake)
    assert P._probe((2048, 1024, 2048)) == (30.0, 0.5)
    assert timed == [(256, 256, 256)] * 2


def test_auto_is_fp32_on_this_cpu_when_it_has_no_bf16_unit(fresh_check):
    flags = P.cpu_flags()
    if flags is None or any(f in flags for f in P.BF16_FLAGS):
        pytest.skip("this CPU has bf16 flags (or none readable): the probe decides")
    assert P.resolve_precision("auto", CPU) == "fp32"


def _plain(m, x):
    linear, act = m.cell_net
    return torch.nn.functional.leaky_relu(linear(x), act.negative_slope).sum(1, dtype=torch.float32)


def test_bf16_training_layer_keeps_float32_sums_and_gradients():
    """Under CPU bf16 autocast the training path computes in bf16, returns float32 sums and float32 gradients
    close to the float32 ones, and matches the plain layers under the same autocast."""
    torch.manual_seed(0)
    m = DeepSets(model_spec(24, cell_hidden=64, head_hidden=8, out_dim=8))
    x = torch.randn(3, 200, 24)
    grads = {}
    for name in ("fp32", "bf16"):
        m.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
            pooled = m.pool_sets(x)
        assert pooled.dtype == torch.float32
        pooled.square().sum().backward()
        grads[name] = (pooled.detach(), *[p.grad.clone() for p in m.cell_net[0].parameters()])
    for a, b in zip(grads["fp32"], grads["bf16"]):
        assert b.dtype == torch.float32
        assert (a - b).norm() / a.norm() < 2e-2
        assert not torch.equal(a, b)  # it did compute in bf16
    with torch.no_grad(), BF16:
        torch.testing.assert_close(grads["bf16"][0], _plain(m, x), rtol=2e-2, atol=1e-1)


@pytest.mark.parametrize("head", ["paper", "batchnorm"])
def test_head_runs_in_float32_under_bf16_autocast(head):
    m = DeepSets(model_spec(6, cell_hidden=32, head_hidden=8, out_dim=8, head=head)).eval()
    pooled = 50 + torch.randn(5, 32)  # sums: large, with small differences
    with BF16:
        z = m.project(pooled)
    assert z.dtype == torch.float32 and torch.equal(z, m.project(pooled))


@pytest.mark.parametrize("device", DEVICES)
def test_pooled_sums_accumulate_in_float32(device):
    """257 activations of exactly 1: a bf16 sum stops at 256 (8-bit mantissa); every path must give 257."""
    m = DeepSets(model_spec(4, cell_hidden=8, head_hidden=4, out_dim=4)).to(device)
    with torch.no_grad():
        m.cell_net[0].weight.zero_()
        m.cell_net[0].bias.fill_(1.0)
    x = torch.randn(2, 257, 4, device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        assert (m.pool_sets(x) == 257).all()  # training path (SetPooledLayer on the CPU, plain layers on CUDA)
        with torch.no_grad():
            assert (m.pool_sets(x) == 257).all()  # plain layers
            assert (m.pool_wells(x.reshape(-1, 4), np.repeat([0, 1], 257), 2, chunk_cells=100) == 257).all()


def test_bf16_layer_gradient_matches_autograd_of_its_own_arithmetic():
    """The hand-written backward in bf16 equals autograd through the same bf16 forward, to bf16 rounding."""
    torch.manual_seed(1)
    x = torch.randn(2, 50, 6)
    w = torch.randn(10, 6, requires_grad=True)
    b = torch.randn(10, requires_grad=True)
    out = SetPooledLayer.apply(x, w, b, 0.01, torch.bfloat16)
    out.sum().backward()
    w2, b2 = w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    h = torch.nn.functional.leaky_relu(x.bfloat16() @ w2.bfloat16().t() + b2.bfloat16(), 0.01)
    h.float().sum(1).sum().backward()
    torch.testing.assert_close(w.grad, w2.grad, rtol=2e-2, atol=5e-2)
    torch.testing.assert_close(b.grad, b2.grad, rtol=2e-2, atol=5e-2)


def train_small(tmp_path, tiny_plates, **settings) -> Path:
    """A small model trained on plate P1 (``settings``: device, precision, epochs, ...): its checkpoint."""
    paths, features = tiny_plates
    pack_cell_store(paths["P1"], features, tmp_path / "store", "P1", annotation())
    values = dict(batch_compounds=8, cells_mean=30, cells_std=10, cells_min=10, cell_hidden=32, head_hidden=8, out_dim=8)
    train_model([tmp_path / "store"], features, tmp_path / "m.pt", tmp_path / "log.csv", train_settings(**{**values, **settings}))
    return tmp_path / "m.pt"


def test_precision_is_recorded_in_profiles_and_ap_files(tmp_path, tiny_plates):
    """Checkpoint -> model profiles -> AP file: each records the arithmetic (Parquet key-value metadata)."""
    paths, _ = tiny_plates
    train_small(tmp_path, tiny_plates, epochs=1, device="cpu", precision="fp32")
    embed_plate(paths["P3"], tmp_path / "m.pt", {"model": tmp_path / "p.parquet", "model_untrained": tmp_path / "u.parquet"},
                "P3", embed_settings(device="cpu", precision="bf16"))
    expected = {"cytoagg.precision": "bf16", "cytoagg.model_precision": "fp32"}
    assert provenance(tmp_path / "p.parquet") == expected
    assert provenance(tmp_path / "u.parquet") == {"cytoagg.precision": "bf16"}  # never trained
    evaluate_profiles({"model": [tmp_path / "p.parquet"], "model_untrained": [tmp_path / "u.parquet"]},
                      tmp_path / "ap.parquet", evaluate_settings())
    assert provenance(tmp_path / "ap.parquet") == expected
    assert precision_note(expected) == "Model profiles computed in bf16, by a model trained in fp32 (`train.precision`).\n\n"
    assert provenance(paths["P3"]) == {} and precision_note({}) == ""


@CUDA
def test_cuda_trains_in_bf16_and_profiles_like_the_cpu(tmp_path, tiny_plates):
    """On CUDA, auto means bf16 (recorded); its profiles of a plate match the CPU's fp32 ones of the same model."""
    paths, _ = tiny_plates
    train_small(tmp_path, tiny_plates, epochs=3, device="cuda", precision="auto")
    assert load_checkpoint(tmp_path / "m.pt")["precision"] == "bf16"
    for device, precision in (("cuda", "auto"), ("cpu", "fp32")):
        embed_plate(paths["P3"], tmp_path / "m.pt", {"model": tmp_path / f"{device}.parquet"}, "P3",
                    embed_settings(device=device, precision=precision))
    assert provenance(tmp_path / "cuda.parquet")["cytoagg.precision"] == "bf16"
    a, b = read_profiles(tmp_path / "cuda.parquet")[1], read_profiles(tmp_path / "cpu.parquet")[1]
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.99, cosine.min()


@CUDA
def test_cuda_cells_on_the_gpu_give_the_host_paths_losses():
    """Batches gathered on the GPU from resident cells equal those gathered on the host into pinned buffers."""
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from cytoagg.io.cells import PlateCells
    from cytoagg.model.loss import supcon_loss
    from cytoagg.model.sampler import SetSampler, SetSizeSchedule
    from cytoagg.model.train import _run_epoch, resident_cells

    rng = np.random.default_rng(0)
    wells = np.repeat([f"W{i:02d}" for i in range(24)], 30)
    compounds = np.repeat([f"C{i}" for i in range(6)], 4 * 30)
    plates = [PlateCells.from_cells("P1", rng.standard_normal((len(wells), 7)).astype(np.float32), wells, compounds)]
    samplers = [SetSampler(plates[0], [f"C{i}" for i in range(6)], n_views=4)]
    cuda = torch.device("cuda")
    losses = []
    for resident in (None, resident_cells(plates, cuda)):
        assert resident is None or resident[0].device.type == "cuda"
        torch.manual_seed(0)
        model = DeepSets(model_spec(7, cell_hidden=16, head_hidden=8, out_dim=8)).to(cuda)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        with ThreadPoolExecutor(1) as pool:
            got, _ = _run_epoch(model, opt, supcon_loss, {}, plates, samplers, SetSizeSchedule(20, 6, 4),
                                SimpleNamespace(batch_compounds=3), np.random.default_rng(1), cuda, pool, resident,
                                precision="bf16")
        losses.append(got)
    assert len(losses[0]) == 2
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def test_gpu_check_stops_at_once_without_cuda(tmp_path):
    """benchmarks/gpu_check.sh on a machine without a CUDA device (or with CUDA hidden): a clear message, exit 3,
    before it installs anything."""
    env = {**os.environ, "GPU_CHECK_DIR": str(tmp_path / "work")}
    if torch.cuda.is_available():
        env["CUDA_VISIBLE_DEVICES"] = ""
    run = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 3, run.stdout + run.stderr
    assert "no CUDA device" in run.stderr
    assert not Path(tmp_path / "work").exists()  # nothing installed, nothing written
