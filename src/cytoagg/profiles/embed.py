"""Profiling every well of a plate with the trained model, from ALL its cells (no sampling)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..io.cells import PlateCells, load_plate_cells
from ..io.columns import Annotation
from ..io.files import InputError
from ..io.parquet import PRECISION_KEY, write_profiles
from ..model.checkpoint import load_model, untrained_network
from ..model.inference import embed_cells, negcon_wells
from ..settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedSettings(Settings):
    """``train.embedding``, ``train.device`` and ``train.precision``, the normalization the plate went through
    (config ``normalize:`` less ``memory_mb``) and the metadata columns."""

    annotation: Annotation
    embedding: str  # head | pooled
    device: str
    precision: str  # auto | fp32 | bf16
    normalization: dict


CONTROLS = ("model_untrained", "mlp_on_mean")  # the model's controls, profiled by the same step


def embed_plate(normalized, checkpoint, outputs: dict, plate: str, settings: EmbedSettings, threads: int = 1,
                mlp_on_mean=None) -> dict[str, pd.DataFrame]:
    """Write one row per well (its metadata, ``Metadata_n_cells`` and the profile ``emb_0000...``) for each of
    ``outputs`` (name -> path): ``model``, the trained model, from ALL the well's cells; ``model_untrained``, the
    same network with the weights it started training from (the checkpoint's model spec and seed); and
    ``mlp_on_mean``, the network trained on well means (checkpoint ``mlp_on_mean``) applied to the well's mean
    profile. The plate's cells are read once for all of them. Each file's key-value metadata records the
    arithmetic of its profiles and of the training (``cytoagg.precision``, ``cytoagg.model_precision``).

    ``embedding``: ``head`` (the projection the loss saw) or ``pooled`` (the pooled per-cell features before the head).
    ``normalization``: the settings the plate was normalized with; a model trained on another
    normalization method is refused (its input would not mean what it learned).
    """

    embedding = settings.embedding
    if embedding not in ("head", "pooled"):
        raise InputError(f"train.embedding must be 'head' or 'pooled', got {embedding!r}")
    unknown = sorted(set(outputs) - {"model", *CONTROLS})
    if unknown:
        raise InputError(f"embed: unknown output(s) {unknown}; expected model and the controls {list(CONTROLS)}")
    trained = load_model(checkpoint, settings.device, threads, settings.precision)
    _check_normalization(checkpoint, trained.payload.get("normalization") or {}, settings.normalization)
    cells, wells, _ = load_plate_cells(normalized, trained.features, plate, settings.annotation)
    use_head = embedding == "head"
    negcon = negcon_wells(trained.network, wells, settings.annotation, normalized)
    profiles, provenance = {}, {}
    if "model" in outputs:
        profiles["model"] = embed_cells(trained.network, cells, trained.device, trained.precision, use_head=use_head,
                                        negcon=negcon)
        provenance["model"] = trained.provenance()
    if "model_untrained" in outputs:
        network = untrained_network(trained.payload, trained.device)
        profiles["model_untrained"] = embed_cells(network, cells, trained.device, trained.precision, use_head=use_head,
                                                  negcon=negcon)
        provenance["model_untrained"] = {PRECISION_KEY: trained.precision}
    if "mlp_on_mean" in outputs:
        if mlp_on_mean is None:
            raise InputError("embed: the mlp_on_mean output needs its checkpoint (--mlp-on-mean)")
        control = load_model(mlp_on_mean, settings.device, threads, settings.precision)
        if control.features != trained.features:
            raise InputError(f"{mlp_on_mean}: trained on other features than {checkpoint}")
        means = (np.add.reduceat(cells.x.astype(np.float64), cells.offsets[:-1], axis=0) / cells.counts[:, None])
        one_per_well = PlateCells(plate, means.astype(np.float32), np.arange(len(means) + 1, dtype=np.int64),
                                  cells.wells, cells.perturbations)
        profiles["mlp_on_mean"] = embed_cells(control.network, one_per_well, control.device, control.precision,
                                              use_head=use_head,
                                              negcon=negcon_wells(control.network, wells, settings.annotation, normalized))
        provenance["mlp_on_mean"] = control.provenance()
    written = {}
    for name, y in profiles.items():
        df = pd.concat(
            [wells.reset_index(drop=True), pd.DataFrame(y, columns=[f"emb_{i:04d}" for i in range(y.shape[1])])],
            axis=1,
        )
        write_profiles(df, outputs[name], metadata=provenance[name])
        written[name] = df
    logger.info("%s: %d wells embedded from %d cells (%s, %s, %s): %s", plate, len(wells), len(cells.x), embedding,
                trained.device, trained.precision, ", ".join(profiles))
    return written


def _check_normalization(checkpoint, trained: dict, current: dict) -> None:
    if trained.get("method") and current.get("method") and trained["method"] != current["method"]:
        raise InputError(
            f"{checkpoint}: the model was trained on plates normalized with {trained['method']!r}, "
            f"but normalize.method is {current['method']!r}"
        )
    differ = sorted(k for k in set(trained) & set(current) if trained[k] != current[k])
    if differ:
        logger.warning("%s: trained with other normalization settings for %s: %s vs %s", checkpoint, differ,
                    {k: trained[k] for k in differ}, {k: current[k] for k in differ})
