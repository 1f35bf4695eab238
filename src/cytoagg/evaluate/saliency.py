"""The saliency step: which cells of each well the trained model listens to, and what those cells look like.

Per plate, :func:`saliency_plate` writes one row per cell (in the normalized plate's row order) with its two
saliencies (:mod:`cytoagg.model.saliency`: V0 ``saliency_contribution``, V1 ``saliency_gradient``), and the
Pearson and Spearman correlation of each saliency with each of the model's input features across the cells of
each well, averaged over the plate's wells. :func:`summarize_saliency` gathers those into
``tables/saliency_feature_correlation.csv`` (per plate, and over the wells of every plate), and
:func:`debris_auroc` scores the saliencies against the synthetic screen's debris.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..io.cells import feature_chunks
from ..io.columns import Annotation
from ..io.files import InputError, atomic_path, write_table
from ..io.parquet import open_parquet
from ..model.checkpoint import load_model
from ..model.saliency import CHUNK_CELLS, cell_saliency
from ..settings import Settings
from .summarize import Splits

logger = logging.getLogger(__name__)

SALIENCIES = {"contribution": "saliency_contribution", "gradient": "saliency_gradient"}
ID_COLUMNS = ("Metadata_ImageNumber", "Metadata_ObjectNumber")  # as ingest writes them
ALL = "all"


@dataclass(frozen=True)
class SaliencySettings(Settings):
    """The device (config ``train.device``), the metadata columns, and config ``saliency:`` (less what only the
    figures use)."""

    annotation: Annotation
    device: str
    precision: str  # auto | fp32 | bf16 (train.precision)
    gradient: bool  # also V1 (a second pass over the cells); False: V0 only, saliency_gradient empty
    min_cells: int  # a well with fewer cells with a saliency is left out of the correlations
    correlation_cells: int  # the correlations use at most this many cells of a well (a seeded random sample)


def saliency_plate(normalized, checkpoint, out_cells, out_correlation, plate: str, settings: SaliencySettings,
                   threads: int = 1) -> dict:
    """Write the per-cell saliencies of one plate and its per-feature correlations (see the module docstring).

    The cells are streamed in chunks: one pass for V0 and the pooled vectors, a second for V1 (with
    ``settings.gradient``); the correlations ride on the last pass. Memory holds one chunk of activations, the
    per-cell identifiers and saliencies, and the sampled cells of the wells whose correlations are not finished
    (one well at a time, since ingest writes wells contiguously): not the plate, whatever its size.
    """
    trained = load_model(checkpoint, settings.device, threads, settings.precision)
    temperature = _temperature(trained.payload, checkpoint)
    ann = settings.annotation
    pf = open_parquet(normalized)
    columns = set(pf.schema_arrow.names)
    missing = [c for c in (ann.well_col, ann.perturbation_col) if c not in columns]
    if missing:
        raise InputError(f"{normalized}: metadata column {missing[0]!r} not found")
    absent = [f for f in trained.features if f not in columns]
    if absent:
        raise InputError(f"{normalized}: {len(absent)} feature(s) the model was trained on are missing, e.g. {absent[:5]}")
    ids = [c for c in ID_COLUMNS if c in columns]
    meta = pf.read(columns=[ann.well_col, ann.perturbation_col, *ids])
    wells = meta.column(ann.well_col).to_numpy(zero_copy_only=False).astype(str)
    well_index, well_names = pd.factorize(wells, sort=True)
    labels = _well_labels(meta.column(ann.perturbation_col).to_numpy(zero_copy_only=False).astype(str), well_index,
                          well_names, normalized)
    features = trained.features
    correlations = WellCorrelations(well_index, len(well_names), features, settings.min_cells,
                                    settings.correlation_cells)

    correlating = [0.0]  # seconds spent in the correlations, timed apart from the passes over the cells

    def correlate(*chunk):
        t = time.perf_counter()
        correlations.add(*chunk)
        correlating[0] += time.perf_counter() - t

    started = time.perf_counter()
    sal = cell_saliency(trained.network, lambda: feature_chunks(normalized, features, CHUNK_CELLS), well_index, labels,
                        temperature, gradient=settings.gradient, on_chunk=correlate, precision=trained.precision)
    seconds = time.perf_counter() - started
    gradient = sal.gradient if sal.gradient is not None else np.full(len(wells), np.nan)
    table = pa.table({
        ann.plate_col: pa.array([plate] * len(wells), pa.string()).dictionary_encode(),
        **{name: meta.column(name) for name in (ann.well_col, ann.perturbation_col, *ids)},
        SALIENCIES["contribution"]: pa.array(sal.contribution.astype(np.float32)),
        SALIENCIES["gradient"]: pa.array(gradient.astype(np.float32)),
    })
    with atomic_path(out_cells) as tmp:
        pq.write_table(table, tmp)
    corr = correlations.table()
    corr.insert(0, "plate", plate)
    write_table(corr, out_correlation)
    summary = {"plate": plate, "cells": len(wells), "wells": len(well_names),
               "wells_without_loss": int((~sal.has_loss).sum()), "device": str(trained.device),
               "precision": trained.precision, "seconds_saliency": round(seconds, 1),
               "seconds_correlations": round(correlating[0], 1)}
    logger.info("%s", summary)
    return summary


def _temperature(payload: dict, checkpoint) -> float:
    """The temperature the model was trained with (V1's loss is the training loss's SupCon form)."""
    try:
        return float(payload["train_settings"]["temperature"])
    except (KeyError, TypeError) as e:
        raise InputError(f"{checkpoint}: the checkpoint does not record its training temperature (train_settings)") from e


def _well_labels(perturbation: np.ndarray, well_index: np.ndarray, well_names, path) -> np.ndarray:
    """The perturbation of each well; a well with two is an error naming it."""
    _, first = np.unique(well_index, return_index=True)  # each well's first cell, wells in code order
    labels = perturbation[first]
    bad = np.flatnonzero(perturbation != labels[well_index])
    if len(bad):
        raise InputError(f"{path}: well {well_names[well_index[bad[0]]]} has more than one perturbation")
    return labels


class WellCorrelations:
    """Pearson and Spearman correlation of each saliency with each feature across the cells of each well, summed
    over wells: on at most ``max_cells`` cells of a well (a random sample, seeded, the same for both
    saliencies), of which those with a finite saliency count, at least ``min_cells`` of them.

    Chunks of cells come in plate order; a well's sampled cells are kept until its last one has come (one well
    at a time: ingest writes wells contiguously), then its correlations are computed and its cells dropped. A
    feature (or saliency) constant in a well has no correlation there; ``n_wells`` counts the wells each mean
    is over.
    """

    def __init__(self, well_index: np.ndarray, n_wells: int, features: list[str], min_cells: int, max_cells: int,
                 seed: int = 0):
        self.well_index = well_index
        self.sampled = sample_within_wells(well_index, max_cells, seed)
        self.remaining = np.bincount(well_index[self.sampled], minlength=n_wells)
        self.features = list(features)
        self.min_cells = min_cells
        self.pending: dict[int, list] = {}
        shape = (len(SALIENCIES), len(features))
        self.sums = {"pearson": np.zeros(shape), "spearman": np.zeros(shape)}
        self.n_wells = np.zeros(shape, dtype=np.int64)

    def add(self, start: int, x: np.ndarray, contribution: np.ndarray, gradient: np.ndarray | None) -> None:
        """A chunk of cells (rows ``start...``): features, V0 (or anything proportional to it within each well:
        the correlations are the same) and V1 (None: not computed)."""
        keep = np.flatnonzero(self.sampled[start : start + len(x)])
        if not len(keep):
            return
        wells = self.well_index[start + keep]
        s = np.column_stack([contribution[keep], gradient[keep] if gradient is not None else np.full(len(keep), np.nan)])
        x = x[keep]
        cuts = np.r_[0, np.flatnonzero(wells[1:] != wells[:-1]) + 1, len(wells)]
        for a, b in zip(cuts[:-1], cuts[1:]):
            w = int(wells[a])
            self.pending.setdefault(w, []).append((x[a:b], s[a:b]))
            self.remaining[w] -= b - a
            if self.remaining[w] == 0:
                parts = self.pending.pop(w)
                self._well(np.vstack([p[0] for p in parts]), np.vstack([p[1] for p in parts]))

    def _well(self, x: np.ndarray, s: np.ndarray) -> None:
        ranked: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}  # the cells with a saliency -> features, ranks
        for k in range(s.shape[1]):
            valid = np.isfinite(s[:, k])
            if valid.sum() < self.min_cells:
                continue
            if valid.tobytes() not in ranked:
                xv = x[valid]
                ranked[valid.tobytes()] = (xv.astype(np.float64), average_ranks(xv))  # float32 sorts faster, same ranks
            xv, xr = ranked[valid.tobytes()]
            pearson = _correlations(s[valid, k], xv)
            spearman = _correlations(average_ranks(s[valid, k][:, None])[:, 0], xr)
            ok = np.isfinite(pearson) & np.isfinite(spearman)
            self.sums["pearson"][k, ok] += pearson[ok]
            self.sums["spearman"][k, ok] += spearman[ok]
            self.n_wells[k, ok] += 1

    def table(self) -> pd.DataFrame:
        """One row per saliency x feature: mean Pearson and Spearman over wells, and the number of wells."""
        if self.pending:
            raise RuntimeError(f"bug: {len(self.pending)} well(s) still waiting for cells")
        with np.errstate(invalid="ignore", divide="ignore"):
            means = {m: v / self.n_wells for m, v in self.sums.items()}
        return pd.DataFrame({
            "saliency": np.repeat(list(SALIENCIES), len(self.features)),
            "feature": self.features * len(SALIENCIES),
            "pearson": means["pearson"].ravel(),
            "spearman": means["spearman"].ravel(),
            "n_wells": self.n_wells.ravel(),
        })


def sample_within_wells(well_index: np.ndarray, max_cells: int, seed: int = 0) -> np.ndarray:
    """Which cells are in the sample: every cell of a well with at most ``max_cells``, else ``max_cells`` of them at
    random (seeded), (n_cells,) bool."""
    u = np.random.default_rng(seed).random(len(well_index))
    order = np.lexsort((u, well_index))
    sorted_wells = well_index[order]
    first = np.r_[0, np.flatnonzero(sorted_wells[1:] != sorted_wells[:-1]) + 1] if len(order) else np.zeros(0, int)
    rank = np.arange(len(order)) - np.repeat(first, np.diff(np.r_[first, len(order)]))
    sampled = np.zeros(len(well_index), dtype=bool)
    sampled[order] = rank < max_cells
    return sampled


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks (1..n) of each column of ``x`` (n, k), ties sharing their average rank: ``scipy.stats.rankdata(x,
    axis=0)``, faster on many short columns (one argsort of the transposed rows; ties, where there are any,
    from the first and last position of each run of equal values)."""
    xt = np.ascontiguousarray(x.T)
    k, n = xt.shape
    order = np.argsort(xt, axis=1)
    flat = (order + (np.arange(k) * n)[:, None]).ravel()  # sorted positions in the flattened rows
    ordered = xt.ravel()[flat].reshape(k, n)
    tie = ordered[:, 1:] == ordered[:, :-1]
    if tie.any():
        j = np.arange(n)
        first = np.where(np.c_[np.ones((k, 1), bool), ~tie], j, 0)
        np.maximum.accumulate(first, axis=1, out=first)
        last = np.where(np.c_[~tie, np.ones((k, 1), bool)], j, n - 1)[:, ::-1]
        last = np.minimum.accumulate(last, axis=1)[:, ::-1]
        rank = (first + last) / 2 + 1
    else:
        rank = np.broadcast_to(np.arange(1, n + 1, dtype=np.float64), (k, n))
    ranks = np.empty(k * n)
    ranks[flat] = rank.ravel()
    return ranks.reshape(k, n).T


def _correlations(s: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Pearson correlation of vector ``s`` with each column of ``x`` (NaN where either is constant)."""
    sc = s - s.mean()
    xc = x - x.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sc @ xc) / np.sqrt((sc @ sc) * (xc * xc).sum(axis=0))


# ------------------------------------------------------------------------------------------ the tables


def saliency_correlation_table(per_plate: list[pd.DataFrame], splits: Splits) -> pd.DataFrame:
    """``tables/saliency_feature_correlation.csv``: each plate's rows and ``all`` (the mean over the wells of every
    plate), each block by saliency, strongest correlation (|Pearson|) first, with its ``rank``."""
    plates = pd.concat(per_plate, ignore_index=True)
    plates["plate_split"] = plates["plate"].map(lambda p: splits.plate_split.get(p, "unknown"))
    sums = plates.assign(pearson=plates["pearson"] * plates["n_wells"], spearman=plates["spearman"] * plates["n_wells"])
    sums = sums.fillna({"pearson": 0.0, "spearman": 0.0})
    overall = sums.groupby(["saliency", "feature"], sort=False)[["pearson", "spearman", "n_wells"]].sum().reset_index()
    with np.errstate(invalid="ignore", divide="ignore"):
        overall["pearson"] = overall["pearson"] / overall["n_wells"].where(overall["n_wells"] > 0)
        overall["spearman"] = overall["spearman"] / overall["n_wells"].where(overall["n_wells"] > 0)
    overall.insert(0, "plate", ALL)
    overall.insert(1, "plate_split", ALL)
    order = {"train": 0, "validation": 1, "unknown": 2}
    plates = plates.sort_values(["plate_split", "plate"], key=lambda c: c.map(order) if c.name == "plate_split" else c,
                                kind="stable")
    out = pd.concat([overall, plates[overall.columns]], ignore_index=True)
    out["strength"] = out["pearson"].abs().fillna(-1.0)
    out["block"] = pd.factorize(out["plate"] + "/" + out["saliency"])[0]
    out = out.sort_values(["block", "strength"], ascending=[True, False], kind="stable")
    out["rank"] = out.groupby("block").cumcount() + 1
    return out.drop(columns=["strength", "block"]).reset_index(drop=True)


def summarize_saliency(correlations: list, out_csv, splits: Splits) -> pd.DataFrame:
    table = saliency_correlation_table([pd.read_parquet(p) for p in correlations], splits)
    write_table(table, out_csv)
    return table


def well_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(a positive's score > a negative's), ties counting one half (the Mann-Whitney AUROC); NaN without both."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(np.asarray(scores, dtype=np.float64)[:, None])[:, 0]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _saliency_files(paths, annotation: Annotation, plates: dict, what: str):
    """(path, plate, its cells' saliencies) of each per-cell saliency file, whose plate must be one of ``plates``."""
    for path in paths:
        cells = pd.read_parquet(path)
        plate = str(cells[annotation.plate_col].iloc[0])
        if plate not in plates:
            raise InputError(f"{path}: no {what} given for plate {plate}")
        yield path, plate, cells


def _debris_tables(paths) -> dict[str, pd.DataFrame]:
    """The synthetic screen's debris side tables, by plate."""
    tables = {}
    for path in paths:
        table = pd.read_parquet(path)
        tables[str(table["Metadata_Plate"].iloc[0])] = table
    return tables


@dataclass(frozen=True)
class DebrisSettings(Settings):
    """The metadata columns and which plates were trained on."""

    annotation: Annotation
    splits: Splits


def debris_auroc(saliency: list, debris: list, splits: Splits, annotation: Annotation, out_csv=None) -> pd.DataFrame:
    """How well each saliency ranks the synthetic screen's debris below its real cells: per plate, the mean over
    wells of the AUROC of real cells against debris (P(a real cell's saliency > a debris object's), within the
    well, since V0 is a share of its own well), over the wells with both and a finite saliency; and ``all``
    (every plate's wells). Cells are matched to the side table by image and object number."""
    truth = _debris_tables(debris)
    rows = []
    per_plate = []
    for path, plate, cells in _saliency_files(saliency, annotation, truth, "debris table"):
        if not set(ID_COLUMNS) <= set(cells.columns):
            raise InputError(f"{path}: no {' / '.join(ID_COLUMNS)} columns to match the debris table with")
        merged = cells.merge(truth[plate][[*ID_COLUMNS, "debris"]], on=list(ID_COLUMNS), how="left", validate="one_to_one")
        if merged["debris"].isna().any():
            raise InputError(f"{path}: {int(merged['debris'].isna().sum())} cell(s) are not in plate {plate}'s debris table")
        real = ~merged["debris"].to_numpy(dtype=bool)
        groups = merged.groupby(annotation.well_col, sort=True).indices
        for name, column in SALIENCIES.items():
            s = merged[column].to_numpy(dtype=np.float64)
            aucs = []
            for idx in groups.values():
                ok = idx[np.isfinite(s[idx])]
                aucs.append(well_auroc(s[ok], real[ok]))
            aucs = np.asarray(aucs)
            per_plate.append((name, aucs[np.isfinite(aucs)]))
            rows.append({"plate": plate, "plate_split": splits.plate_split.get(plate, "unknown"), "saliency": name,
                         "auroc": float(np.nanmean(aucs)) if np.isfinite(aucs).any() else np.nan,
                         "n_wells": int(np.isfinite(aucs).sum()), "n_cells": int(real.sum()), "n_debris": int((~real).sum())})
    table = pd.DataFrame(rows)
    for name in SALIENCIES:
        both = np.concatenate([a for n, a in per_plate if n == name] or [np.zeros(0)])
        sub = table[table["saliency"] == name]
        table = pd.concat([table, pd.DataFrame([{
            "plate": ALL, "plate_split": ALL, "saliency": name, "auroc": float(both.mean()) if len(both) else np.nan,
            "n_wells": len(both), "n_cells": int(sub["n_cells"].sum()), "n_debris": int(sub["n_debris"].sum()),
        }])], ignore_index=True)
    if out_csv is not None:
        write_table(table, out_csv)
    return table


# ------------------------------------------------------------------------------------------ the figures' data


@dataclass(frozen=True)
class SaliencyFigureSettings(Settings):
    """The metadata columns and config ``saliency.plot_wells``."""

    annotation: Annotation
    plot_wells: int


def top_features(table: pd.DataFrame) -> dict[str, str]:
    """Per saliency, the feature with the strongest mean correlation (|Pearson|) over every plate's wells."""
    overall = table[(table["plate"] == ALL) & table["pearson"].notna()]
    return {name: str(g.loc[g["pearson"].abs().idxmax(), "feature"]) for name, g in overall.groupby("saliency")}


def example_cells(saliency: list, normalized: list, table: pd.DataFrame, annotation: Annotation, n_wells: int,
                  debris: list = ()) -> pd.DataFrame:
    """The cells of ``n_wells`` wells of the given plates with their saliencies and each saliency's top feature
    (:func:`top_features`), for the per-cell figure: treated wells with a V1, the most populous first, taken
    from the plates in turn. Files are matched by their plate column; a saliency file's rows are its
    normalized plate's rows, in order. Columns: plate, well, perturbation, saliency, feature, value, score,
    debris (NaN without a debris table), pearson (the well's own)."""
    top = top_features(table)
    plate_of = lambda path: str(pq.read_table(path, columns=[annotation.plate_col]).column(0)[0])  # noqa: E731
    plates = {plate_of(p): p for p in normalized}
    truth = _debris_tables(debris)
    candidates = []
    for path, plate, cells in _saliency_files(saliency, annotation, plates, "normalized plate"):
        meta = cells[[annotation.well_col, annotation.perturbation_col]]
        usable = ~annotation.negcon_mask(meta) if annotation.negcon_col in meta else np.ones(len(meta), bool)
        usable &= np.isfinite(cells[SALIENCIES["gradient"]].to_numpy())
        if not usable.any():
            usable = np.ones(len(cells), dtype=bool)
        sizes = cells[usable].groupby(annotation.well_col).size().sort_values(ascending=False, kind="stable")
        candidates.append((plate, path, cells, list(sizes.index)))
    chosen = []
    for i in range(max((len(c[3]) for c in candidates), default=0)):
        chosen += [(plate, path, cells, wells[i]) for plate, path, cells, wells in candidates if i < len(wells)]
    frames, features = [], {}
    for plate, path, cells, well in chosen[:n_wells]:
        if plate not in features:
            features[plate] = pq.read_table(plates[plate], columns=[annotation.well_col, *sorted(set(top.values()))]).to_pandas()
            wells = features[plate][annotation.well_col].astype(str).to_numpy()
            if len(wells) != len(cells) or not np.array_equal(wells, cells[annotation.well_col].astype(str).to_numpy()):
                raise InputError(f"{path}: its rows are not those of {plates[plate]} (rerun the saliency step)")
        values = features[plate]
        rows = np.flatnonzero(cells[annotation.well_col].astype(str).to_numpy() == str(well))
        flags = np.full(len(rows), np.nan)
        if plate in truth and set(ID_COLUMNS) <= set(cells.columns):
            merged = cells.iloc[rows][list(ID_COLUMNS)].merge(truth[plate], on=list(ID_COLUMNS), how="left")
            flags = merged["debris"].astype(float).to_numpy()
        for name, feature in top.items():
            score = cells[SALIENCIES[name]].to_numpy()[rows].astype(np.float64)
            value = values[feature].to_numpy()[rows].astype(np.float64)
            ok = np.isfinite(score) & np.isfinite(value)
            frames.append(pd.DataFrame({
                "plate": plate, "well": str(well), "perturbation": str(cells[annotation.perturbation_col].iloc[rows[0]]),
                "saliency": name, "feature": feature, "value": value[ok], "score": score[ok], "debris": flags[ok],
                "pearson": _correlations(score[ok], value[ok][:, None])[0] if ok.sum() > 2 else np.nan,
            }))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["plate", "well", "perturbation", "saliency", "feature", "value", "score", "debris", "pearson"])
