"""Profiling every well of a plate with the trained model, from ALL its cells (no sampling)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from ..io.cells import load_plate_cells
from ..io.columns import Annotation
from ..io.files import InputError
from ..io.parquet import write_profiles
from ..model.checkpoint import load_model
from ..model.inference import embed_cells
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


def embed_plate(normalized, checkpoint, out, plate: str, settings: EmbedSettings, threads: int = 1) -> pd.DataFrame:
    """Write one row per well: its metadata, ``Metadata_n_cells`` and the model profile ``emb_0000...``; the
    file's key-value metadata records the arithmetic of the profiles and of the training (``cytoagg.precision``,
    ``cytoagg.model_precision``).

    ``embedding``: ``head`` (the projection the loss saw) or ``pooled`` (the pooled per-cell features before the head).
    ``normalization``: the settings the plate was normalized with; a model trained on another
    normalization method is refused (its input would not mean what it learned).
    """
    embedding = settings.embedding
    if embedding not in ("head", "pooled"):
        raise InputError(f"train.embedding must be 'head' or 'pooled', got {embedding!r}")
    trained = load_model(checkpoint, settings.device, threads, settings.precision)
    _check_normalization(checkpoint, trained.payload.get("normalization") or {}, settings.normalization)
    cells, wells, _ = load_plate_cells(normalized, trained.features, plate, settings.annotation)
    profiles = embed_cells(trained.network, cells, trained.device, trained.precision, use_head=embedding == "head")
    df = pd.concat(
        [wells.reset_index(drop=True), pd.DataFrame(profiles, columns=[f"emb_{i:04d}" for i in range(profiles.shape[1])])],
        axis=1,
    )
    write_profiles(df, out, metadata=trained.provenance())
    logger.info("%s: %d wells embedded from %d cells (%s, %s, %s)", plate, len(df), len(cells.x), embedding,
                trained.device, trained.precision)
    return df


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
