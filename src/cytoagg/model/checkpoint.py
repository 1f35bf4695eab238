"""Checkpoints: what a trained model is saved as, and loading one back as a ready model."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

import torch

from ..io.files import InputError, atomic_path
from ..io.parquet import MODEL_PRECISION_KEY, PRECISION_KEY
from .network import DeepSets, ModelSpec, pick_device
from .precision import resolve_precision

CHECKPOINT_FORMAT = "cytoagg-model-1"


def save_torch(obj: dict, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file renamed onto ``path``: a killed job never leaves half a checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path) -> dict:
    """Load a cytoagg checkpoint safely (``weights_only=True``: tensors and plain Python values only)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise InputError(f"{path}: not a readable cytoagg checkpoint ({type(e).__name__})") from e
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a cytoagg checkpoint (format {CHECKPOINT_FORMAT!r} expected)")
    return payload


def _spec(payload: dict) -> ModelSpec:
    known = {f.name for f in fields(ModelSpec)}
    missing = sorted(known - set(payload["model_spec"]))
    if missing:
        raise InputError(f"checkpoint from an older cytoagg: its model spec lacks {missing}; train it again")
    return ModelSpec(**payload["model_spec"])


def network_from_payload(payload: dict, device) -> DeepSets:
    network = DeepSets(_spec(payload))
    network.load_state_dict(payload["state_dict"])
    return network.to(device).eval()


@dataclass(frozen=True)
class TrainedModel:
    """A checkpoint loaded for inference: the network (eval mode, on ``device``) and what it was trained on."""

    network: DeepSets
    device: torch.device
    features: list[str]  # the input features, in the order the network expects them
    payload: dict  # the whole checkpoint (settings, normalization, training plates, ...)
    path: str
    precision: str  # the arithmetic it runs in here: fp32 | bf16 (train.precision, resolved on this machine)

    def provenance(self) -> dict[str, str]:
        """What to record beside its outputs (Parquet key-value metadata): the arithmetic of these profiles,
        and of the training (absent from checkpoints written before it was recorded)."""
        trained = self.payload.get("precision")
        return {PRECISION_KEY: self.precision, **({MODEL_PRECISION_KEY: trained} if trained else {})}


def load_model(checkpoint, device: str = "auto", threads: int = 1, precision: str = "auto") -> TrainedModel:
    """The one way every step loads a trained model: torch threads set, device chosen, weights loaded, precision
    resolved (``train.precision``: auto | fp32 | bf16)."""
    torch.set_num_threads(max(1, int(threads)))
    dev = pick_device(device)
    payload = load_checkpoint(checkpoint)
    return TrainedModel(network_from_payload(payload, dev), dev, list(payload["features"]), payload, str(checkpoint),
                        resolve_precision(precision, dev))


def untrained_network(payload: dict, device) -> DeepSets:
    """The network a checkpoint's training started from (the ``model_untrained`` control): the weights training
    began with when the checkpoint holds them (``initial_state_dict``: an init computed from the data, e.g.
    ``train.init: pca_negcon``), else its model spec initialized after seeding torch with its training seed, as
    training does."""
    torch.manual_seed(int(payload["train_settings"]["seed"]))
    network = DeepSets(_spec(payload))
    if payload.get("initial_state_dict") is not None:
        network.load_state_dict(payload["initial_state_dict"])
    return network.to(device).eval()
