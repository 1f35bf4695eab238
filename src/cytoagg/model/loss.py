"""Contrastive losses on set embeddings; ``labels`` say which sets are positives of each other."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def supcon_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) with cosine similarity.

    For anchor i with positives P(i): ``-1/|P(i)| sum_p log(exp(s_ip/t) / sum_{a != i} exp(s_ia/t))``,
    averaged over anchors that have a positive (as pytorch-metric-learning's SupConLoss, which
    CytoSummaryNet used).
    """
    per_anchor = supcon_anchor_losses(embeddings, labels, temperature)
    return per_anchor[~torch.isnan(per_anchor)].mean()


def supcon_anchor_losses(
    embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1, detach_candidates: bool = False
) -> torch.Tensor:
    """Each anchor's term of :func:`supcon_loss` (NaN for an anchor without a positive).

    ``detach_candidates``: the other embeddings are constants in each anchor's term, so the gradient of the
    sum of the terms with respect to embedding i is that of anchor i's own term alone.
    """
    z = F.normalize(embeddings.float(), dim=1)
    logits = z @ (z.detach() if detach_candidates else z).T / temperature
    n = logits.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = pos.sum(dim=1)
    sum_log_prob_pos = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    return torch.where(n_pos > 0, -(sum_log_prob_pos / n_pos.clamp(min=1)), float("nan"))


def triplet_margin_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """Batch-all triplet loss on cosine distance: mean over valid (a, p, n) triplets of relu(d_ap - d_an + m)."""
    z = F.normalize(embeddings.float(), dim=1)
    dist = 1.0 - z @ z.T
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=z.device)
    pos = same & ~eye
    neg = ~same
    triplets = pos[:, :, None] & neg[:, None, :]
    losses = F.relu(dist[:, :, None] - dist[:, None, :] + margin)[triplets]
    return losses.mean() if losses.numel() else dist.sum() * 0.0


LOSSES = {"supcon": supcon_loss, "triplet": triplet_margin_loss}
