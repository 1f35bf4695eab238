"""Profiling every well of a plate with the trained model, from ALL its cells (no sampling)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..io.cells import CellStream, PlateCells, plate_wells
from ..io.columns import Annotation
from ..io.files import InputError
from ..io.parquet import PRECISION_KEY, write_profiles
from ..model.checkpoint import load_model, untrained_network
from ..model.inference import embed_cells, head_from_pooled, negcon_wells
from ..model.network import CHUNK_CELLS, WellPool
from ..model.precision import autocast
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
    networks = {}
    if "model" in outputs:
        networks["model"] = trained.network
    if "model_untrained" in outputs:
        networks["model_untrained"] = untrained_network(trained.payload, trained.device)
    control = None
    if "mlp_on_mean" in outputs:
        if mlp_on_mean is None:
            raise InputError("embed: the mlp_on_mean output needs its checkpoint (--mlp-on-mean)")
        control = load_model(mlp_on_mean, settings.device, threads, settings.precision)
        if control.features != trained.features:
            raise InputError(f"{mlp_on_mean}: trained on other features than {checkpoint}")

    stream = CellStream(normalized, trained.features, settings.annotation)
    pooled, sums, finite = _pool_stream(stream, networks, control is not None, trained.device, trained.precision)
    well_col = settings.annotation.well_col
    counts = np.bincount(stream.well_index[finite], minlength=len(stream.well_names))
    dropped = stream.meta.loc[~finite, well_col].value_counts().sort_index()
    if len(dropped):
        logger.warning("%s: dropped %d cells with NaN/inf features in %d wells", normalized, int((~finite).sum()),
                       len(dropped))
    kept = counts > 0  # a well left with no cell disappears
    wells = plate_wells(stream.meta.loc[finite], normalized, settings.annotation)
    use_head = embedding == "head"
    negcon = negcon_wells(trained.network, wells, settings.annotation, normalized)
    profiles, provenance = {}, {}
    for name, network in networks.items():
        p = pooled[name][torch.from_numpy(kept).to(pooled[name].device)]
        profiles[name] = head_from_pooled(network, p, negcon, plate) if use_head else p.cpu().numpy()
        provenance[name] = trained.provenance() if name == "model" else {PRECISION_KEY: trained.precision}
    if control is not None:
        means = (sums[kept] / counts[kept, None]).astype(np.float32)
        one_per_well = PlateCells(plate, means, np.arange(len(means) + 1, dtype=np.int64),
                                  stream.well_names[kept], wells[settings.annotation.perturbation_col].to_numpy())
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
    logger.info("%s: %d wells embedded from %d cells (%s, %s, %s): %s", plate, len(wells), int(counts.sum()), embedding,
                trained.device, trained.precision, ", ".join(profiles))
    return written


def _pool_stream(stream: CellStream, networks: dict, well_sums: bool, device, precision: str):
    """One pass over the plate's cells, a chunk at a time: each network's pooled vector of every well, the wells'
    float64 feature sums (``well_sums``: for the mean profile the ``mlp_on_mean`` control reads) and which cells
    were finite (cells with NaN/inf in any feature are left out)."""
    n_wells = len(stream.well_names)
    pools = {name: WellPool(network, n_wells) for name, network in networks.items()}
    sums = np.zeros((n_wells, len(stream.features))) if well_sums else None
    finite = np.ones(len(stream.meta), dtype=bool)
    with torch.no_grad(), autocast(device, precision):
        for start, x in stream.chunks(CHUNK_CELLS):
            rows = stream.well_index[start : start + len(x)]
            ok = np.isfinite(x).all(axis=1)
            if not ok.all():
                finite[start : start + len(x)] = ok
                x, rows = x[ok], rows[ok]
            cells = torch.from_numpy(x)
            for pool in pools.values():
                pool.add(cells, rows)
            if sums is not None:
                _add_by_well(sums, x, rows)
    return {name: pool.result() for name, pool in pools.items()}, sums, finite


def _add_by_well(sums: np.ndarray, x: np.ndarray, rows: np.ndarray) -> None:
    """Add a chunk's cells to their wells' float64 sums (a chunk holds a few wells: ingest writes wells
    contiguously, but any order is summed right)."""
    if len(rows) == 0:
        return
    order = np.argsort(rows, kind="stable")
    x, rows = x[order], rows[order]
    starts = np.r_[0, np.flatnonzero(rows[1:] != rows[:-1]) + 1]
    sums[rows[starts]] += np.add.reduceat(x, starts, axis=0, dtype=np.float64)  # each well once: no lost updates


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
