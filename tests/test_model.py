import numpy as np
import pytest
import torch

from helpers import model_spec
from cytoagg.model.loss import supcon_loss, triplet_margin_loss
from cytoagg.model.network import DeepSets, SetPooledLayer, pick_device


def small(pooling="sum", head="paper"):
    torch.manual_seed(0)
    return DeepSets(model_spec(5, cell_hidden=16, head_hidden=8, out_dim=12, pooling=pooling, head=head))


def test_paper_architecture_shapes():
    m = DeepSets(model_spec(30))
    assert [type(x).__name__ for x in m.cell_net] == ["Linear", "LeakyReLU"]
    assert [type(x).__name__ for x in m.head] == ["Linear", "LeakyReLU", "Linear", "LeakyReLU"]
    assert m.cell_net[0].weight.shape == (2048, 30)
    assert m.head[0].weight.shape == (256, 2048) and m.head[2].weight.shape == (2048, 256)
    assert m(torch.randn(3, 7, 30)).shape == (3, 2048)


@pytest.mark.parametrize("pooling", ["sum", "mean"])
@pytest.mark.parametrize("head", ["paper", "batchnorm"])
def test_permutation_invariance(pooling, head):
    m = small(pooling, head).eval()
    x = torch.randn(4, 50, 5)
    perm = x[:, torch.randperm(50)]
    torch.testing.assert_close(m(x), m(perm), rtol=1e-5, atol=1e-5)


def test_sum_vs_mean_pooling():
    m_sum, m_mean = small("sum"), small("mean")
    x = torch.randn(2, 10, 5)
    torch.testing.assert_close(m_sum.pool_sets(x), m_mean.pool_sets(x) * 10, rtol=1e-5, atol=1e-5)
    # Sum pooling grows with the number of cells, mean pooling does not.
    doubled = torch.cat([x, x], dim=1)
    torch.testing.assert_close(m_mean.pool_sets(doubled), m_mean.pool_sets(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m_sum.pool_sets(doubled), 2 * m_sum.pool_sets(x), rtol=1e-5, atol=1e-5)


def test_batchnorm_head_outputs_unit_vectors():
    m = small(head="batchnorm")
    z = m(torch.randn(6, 9, 5))
    torch.testing.assert_close(z.norm(dim=1), torch.ones(6), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_pool_wells_streams_chunks_and_matches_sets(pooling):
    """All cells of each well, pooled in small chunks, equal pooling each well as one set."""
    m = small(pooling).eval()
    sizes = [3, 11, 1, 7]
    x = torch.randn(sum(sizes), 5)
    idx = torch.repeat_interleave(torch.arange(4), torch.tensor(sizes))
    pooled = m.pool_wells(x, idx, 4, chunk_cells=4)
    start = 0
    for w, n in enumerate(sizes):
        torch.testing.assert_close(pooled[w], m.pool_sets(x[None, start : start + n])[0], rtol=1e-5, atol=1e-5)
        start += n


def test_unknown_options_are_errors():
    with pytest.raises(ValueError, match="pooling"):
        DeepSets(model_spec(3, pooling="max"))
    with pytest.raises(ValueError, match="head"):
        DeepSets(model_spec(3, head="mlp"))


def test_pick_device_cpu_fallback():
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cuda"):
            pick_device("cuda")


def test_supcon_hand_computed():
    """Four unit embeddings at known angles; the loss written out term by term."""
    ang = np.array([0.0, 0.3, 1.5, 1.9])
    z = torch.tensor(np.c_[np.cos(ang), np.sin(ang)], dtype=torch.float32)
    labels = torch.tensor([0, 0, 1, 1])
    t = 0.5
    s = np.cos(ang[:, None] - ang[None, :]) / t
    expected = 0.0
    for i, p in [(0, 1), (1, 0), (2, 3), (3, 2)]:
        others = [a for a in range(4) if a != i]
        expected += -(s[i, p] - np.log(np.exp(s[i, others]).sum()))
    expected /= 4
    assert supcon_loss(z, labels, temperature=t).item() == pytest.approx(expected, rel=1e-5)
    # Scale does not matter (cosine similarity).
    assert supcon_loss(3 * z, labels, temperature=t).item() == pytest.approx(expected, rel=1e-5)


def test_supcon_ignores_anchors_without_positives():
    z = torch.randn(5, 4)
    labels = torch.tensor([0, 0, 1, 1, 2])
    full = supcon_loss(z, labels)
    assert torch.isfinite(full)


def test_triplet_hand_computed():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    # valid triplets: (0,1,2) and (1,0,2): d_ap = 0, d_an = 1 -> relu(0 - 1 + m) = 0 for m = 0.2; with m = 1.5 -> 0.5
    assert triplet_margin_loss(z, labels, margin=0.2).item() == pytest.approx(0.0)
    assert triplet_margin_loss(z, labels, margin=1.5).item() == pytest.approx(0.5)


@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_training_layer_matches_plain_layers(pooling):
    """The CPU training path (SetPooledLayer) gives the plain layers' pooled values and gradients."""
    torch.manual_seed(0)
    m = DeepSets(model_spec(7, cell_hidden=16, head_hidden=4, out_dim=5, pooling=pooling)).double()
    x = torch.randn(3, 11, 7, dtype=torch.float64)
    fused = m(x)
    fused.square().sum().backward()
    grads = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    linear, act = m.cell_net
    h = torch.nn.functional.leaky_relu(linear(x), act.negative_slope)
    plain = m.project(h.sum(1) if pooling == "sum" else h.mean(1))
    plain.square().sum().backward()
    torch.testing.assert_close(fused, plain)
    for g, p in zip(grads, m.parameters()):
        torch.testing.assert_close(g, p.grad)
    # and the gradient check of the layer itself
    w = linear.weight.detach().clone().requires_grad_()
    b = linear.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda w, b: SetPooledLayer.apply(x, w, b, 0.01), (w, b))


def second_order(**kw):
    torch.manual_seed(0)
    spec = dict(cell_hidden=3, pooling="meancov", cell_activation="none", plate_norm="negcon_mad", head="parts")
    return DeepSets(model_spec(5, **{**spec, **kw}))


def test_meancov_pooling_is_the_mean_and_covariance_of_the_projections():
    m = second_order().eval()
    sizes = [3, 11, 1, 7]
    x = torch.randn(sum(sizes), 5)
    idx = torch.repeat_interleave(torch.arange(4), torch.tensor(sizes))
    pooled = m.pool_wells(x, idx, 4, chunk_cells=4)
    assert pooled.shape == (4, 3 + 6) and m.pooled_dim == 9
    lin = m.cell_net[0]
    start = 0
    for w, n in enumerate(sizes):
        h = (x[start : start + n] @ lin.weight.T + lin.bias).detach().double().numpy()
        cov = np.cov(h.T, bias=True).reshape(3, 3)
        np.testing.assert_allclose(pooled[w, :3].numpy(), h.mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(pooled[w, 3:].numpy(), cov[np.triu_indices(3)], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(pooled[w], m.pool_sets(x[None, start : start + n])[0], rtol=1e-4, atol=1e-5)
        start += n


def test_plate_norm_and_parts_head():
    m = second_order(part_weight=2.0, part_tau=1.0).eval()
    pooled = torch.randn(40, 9) * 3 + 1
    stats = m.negcon_stats(pooled[:20])
    center, scale, null = stats
    torch.testing.assert_close(center, pooled[:20].median(0).values)
    assert null.shape == (2,) and (null > 0).all()
    out = m.project(pooled, stats)
    assert out.shape == (40, 9) and torch.isfinite(out).all()
    # shrinkage never zeroes a part (no all-zero profile, no ties) and the mean part carries its weight
    z = (pooled - center) / scale
    shrink = (1 - null[0] / z[:, :3].norm(dim=1, keepdim=True)).clamp(min=0.05)
    torch.testing.assert_close(out[:, :3], 2.0 * z[:, :3] * shrink)
    assert (out.norm(dim=1) > 0).all()
    with pytest.raises(ValueError, match="negcon_stats"):
        m.project(pooled)


@pytest.mark.parametrize("options", [
    dict(pooling="meancov", cell_activation="none", plate_norm="negcon_mad", head="parts"),
    dict(pooling="meancov", cell_activation="leaky_relu", plate_norm="negcon_mad", head="paper"),
    dict(pooling="mean", cell_activation="none", plate_norm="negcon_mad", head="parts"),
    dict(pooling="meancov", cell_activation="none", plate_norm="none", head="paper"),
], ids=lambda o: "-".join(o.values()))
def test_second_order_options_keep_permutation_invariance(options):
    m = second_order(**options).eval()
    x = torch.randn(2, 30, 5)
    stats = m.negcon_stats(m.pool_sets(torch.randn(6, 30, 5)))
    torch.testing.assert_close(m(x, stats), m(x[:, torch.randperm(30)], stats), rtol=1e-4, atol=1e-5)


def test_second_order_options_that_do_not_fit_are_errors():
    with pytest.raises(ValueError, match="plate_norm"):
        DeepSets(model_spec(3, head="parts"))
    with pytest.raises(ValueError, match="pooling"):
        DeepSets(model_spec(3, plate_norm="negcon_mad", pooling="sum"))
    with pytest.raises(ValueError, match="cell_activation"):
        DeepSets(model_spec(3, cell_activation="relu"))
