"""The built-in dataset: CellProfiler-like SQLite plates that look like a real compound screen.

Every cell is drawn from a low-dimensional latent cell state ``z`` (cell size, DNA content, ...)
mapped linearly onto CellProfiler-named features, plus feature noise. Compounds act on ``z``:

- ``mean_shift``: moves the mean of ``z`` (the well mean sees it);
- ``covariance``: rescales and rotates ``z`` at an equal mean (the well mean is blind to it);
- ``subpopulation``: splits cells into two subpopulations displaced in opposite directions so that
  the mean is unchanged (the well mean is blind to it);
- ``inactive``: nothing (like the DMSO negative controls).

Plates add batch effects (per-feature offsets and gains, a row gradient), wells add a small random
shift, and cell counts vary per well (a negative binomial with some sparse wells). Compound effects
are fixed by ``seed``; each plate draws its own cells from ``seed`` and the plate name, so adding a
plate never changes the others.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..io.columns import well_names
from ..io.files import atomic_path
from ..settings import Settings

KINDS = ("mean_shift", "covariance", "subpopulation", "inactive")

# CellProfiler-style measurement names (without compartment prefix).
_MEASUREMENTS = (
    "AreaShape_Area",
    "AreaShape_Perimeter",
    "AreaShape_Eccentricity",
    "AreaShape_FormFactor",
    "AreaShape_Solidity",
    "AreaShape_MajorAxisLength",
    "Intensity_MeanIntensity_DNA",
    "Intensity_MeanIntensity_ER",
    "Intensity_MeanIntensity_RNA",
    "Intensity_MeanIntensity_AGP",
    "Intensity_MeanIntensity_Mito",
    "Intensity_IntegratedIntensity_DNA",
    "Intensity_StdIntensity_Mito",
    "Texture_Contrast_ER_3_00_256",
    "Texture_Entropy_AGP_3_00_256",
    "Granularity_1_Mito",
    "Granularity_2_RNA",
    "Correlation_Correlation_DNA_ER",
    "RadialDistribution_FracAtD_Mito_2of4",
    "Neighbors_NumberOfNeighbors_Adjacent",
)
_COMPARTMENTS = ("Cells", "Cytoplasm", "Nuclei")
# The metadata columns of an ingested synthetic plate: Per_Image's, then the platemap's annotations.
METADATA_COLUMNS = ("Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_broad_sample",
                    "Metadata_compound_kind", "Metadata_control_type")


@dataclass(frozen=True)
class SyntheticSpec(Settings):
    """Config ``synthetic:`` (its schema documents each field)."""

    n_compounds: int
    replicates: int
    negcon_wells: int
    cells_per_well: float
    cells_dispersion: float  # negative binomial shape: larger = less spread
    sparse_well_fraction: float
    n_latent: int
    features_per_compartment: int
    feature_noise: float
    kind_fractions: dict  # compound kind -> share of the compounds (KINDS; missing kinds: 0)
    effect_size: float
    well_noise: float
    plate_effect: float
    seed: int


def _plate_seed(seed: int, plate: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{plate}".encode()).digest()[:8], "little")


def feature_names(spec: SyntheticSpec) -> dict[str, list[str]]:
    """Feature names per compartment, prefixed as CellProfiler's SQLite export does."""
    if spec.features_per_compartment > len(_MEASUREMENTS):
        raise ValueError(f"synthetic.features_per_compartment must be <= {len(_MEASUREMENTS)}")
    m = _MEASUREMENTS[: spec.features_per_compartment]
    return {c: [f"{c}_{name}" for name in m] for c in _COMPARTMENTS}


def platemap(spec: SyntheticSpec) -> pd.DataFrame:
    """One 384-well layout shared by all plates (as in a screen's batch): compounds x replicates + DMSO."""
    wells = well_names()
    n_treated = spec.n_compounds * spec.replicates
    if n_treated + spec.negcon_wells > len(wells):
        raise ValueError(
            f"synthetic: {spec.n_compounds} compounds x {spec.replicates} replicates + "
            f"{spec.negcon_wells} negcon wells do not fit on a 384-well plate"
        )
    rng = np.random.default_rng(spec.seed)
    kinds = _compound_kinds(spec)
    compounds = [f"CPD-{i + 1:04d}" for i in range(spec.n_compounds)]
    samples = [c for c in compounds for _ in range(spec.replicates)] + ["DMSO"] * spec.negcon_wells
    kind_of = dict(zip(compounds, kinds)) | {"DMSO": "negcon"}
    chosen = rng.permutation(len(wells))[: len(samples)]
    order = np.argsort(chosen)
    rows = [
        {
            "well_position": wells[chosen[i]],
            "broad_sample": samples[i],
            "compound_kind": kind_of[samples[i]],
            "control_type": "negcon" if samples[i] == "DMSO" else "trt",
        }
        for i in order
    ]
    return pd.DataFrame(rows)


def _compound_kinds(spec: SyntheticSpec) -> list[str]:
    fr = np.asarray([float(spec.kind_fractions.get(k, 0.0)) for k in KINDS])
    counts = np.floor(fr / fr.sum() * spec.n_compounds).astype(int)
    counts[np.argmax(fr)] += spec.n_compounds - counts.sum()
    kinds = [k for k, n in zip(KINDS, counts) for _ in range(n)]
    return list(np.random.default_rng(spec.seed + 1).permutation(kinds))


@dataclass
class _World:
    """What is shared by all plates: the feature map and each compound's effect."""

    loadings: np.ndarray  # (n_latent, n_features)
    base_scale: np.ndarray  # (n_features,)
    base_offset: np.ndarray  # (n_features,)
    effects: dict  # compound -> (kind, params)


def _world(spec: SyntheticSpec) -> _World:
    rng = np.random.default_rng(spec.seed + 2)
    k = spec.n_latent
    n_feat = 3 * spec.features_per_compartment
    loadings = rng.normal(size=(k, n_feat)) / np.sqrt(k)
    # Each feature leans on a few latent factors: correlated blocks as in real CellProfiler data.
    loadings *= rng.random((k, n_feat)) < 0.5
    loadings[rng.integers(0, k, n_feat), np.arange(n_feat)] += 1.0
    base_scale = np.exp(rng.normal(0.0, 1.0, n_feat))
    base_offset = rng.uniform(1.0, 50.0, n_feat)
    pm = platemap(spec)
    effects = {}
    size = spec.effect_size
    for compound, kind in pm.drop_duplicates("broad_sample")[["broad_sample", "compound_kind"]].itertuples(index=False):
        if kind == "mean_shift":
            v = rng.normal(size=k)
            effects[compound] = (kind, 0.8 * size * v / np.linalg.norm(v))
        elif kind == "covariance":
            q, _ = np.linalg.qr(rng.normal(size=(k, k)))
            s = np.ones(k)
            dims = rng.choice(k, 2, replace=False)
            s[dims[0]] = 1.0 + 1.2 * size * rng.uniform(0.8, 1.2)
            s[dims[1]] = 1.0 / s[dims[0]]
            effects[compound] = (kind, q @ np.diag(s) @ q.T)
        elif kind == "subpopulation":
            v = rng.normal(size=k)
            p = rng.uniform(0.3, 0.5)  # share of cells in the displaced subpopulation
            effects[compound] = (kind, (1.5 * size * v / np.linalg.norm(v), p))
        else:
            effects[compound] = (kind, None)
    return _World(loadings, base_scale, base_offset, effects)


def _cells_per_well(spec: SyntheticSpec, n_wells: int, rng: np.random.Generator) -> np.ndarray:
    r = spec.cells_dispersion
    counts = rng.negative_binomial(r, r / (r + spec.cells_per_well), n_wells)
    sparse = rng.random(n_wells) < spec.sparse_well_fraction
    counts[sparse] = rng.integers(3, 20, sparse.sum())
    return np.maximum(counts, 3)


def _latent_cells(effect, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    z = rng.normal(size=(n, k))
    kind, params = effect
    if kind == "mean_shift":
        z += params
    elif kind == "covariance":
        z = z @ params.T
    elif kind == "subpopulation":
        v, p = params
        # A share p of cells moves by +v, the rest by -v p/(1-p): the well mean does not move.
        in_sub = rng.random(n) < p
        z += np.where(in_sub[:, None], v, -v * p / (1 - p))
    return z


def simulate_plate(spec: SyntheticSpec, plate: str) -> pd.DataFrame:
    """Cells of one plate: a ``well`` column and one column per feature (in ``feature_names`` order)."""
    world = _world(spec)
    rng = np.random.default_rng(_plate_seed(spec.seed, plate))
    pm = platemap(spec)
    n_feat = world.loadings.shape[1]
    gain = np.exp(rng.normal(0.0, 0.1 * spec.plate_effect, n_feat))
    offset = rng.normal(0.0, spec.plate_effect, n_feat)
    counts = _cells_per_well(spec, len(pm), rng)
    blocks, wells = [], []
    for (well, sample), n in zip(pm[["well_position", "broad_sample"]].itertuples(index=False), counts):
        effect = world.effects.get(sample, ("inactive", None))
        z = _latent_cells(effect, int(n), spec.n_latent, rng)
        z += rng.normal(0.0, spec.well_noise, spec.n_latent)  # well-to-well variation
        row = ord(well[0]) - ord("A")
        z[:, 0] += 0.3 * spec.plate_effect * (row / 15 - 0.5)  # plate row gradient
        x = z @ world.loadings + rng.normal(0.0, spec.feature_noise, (int(n), n_feat))
        blocks.append(world.base_offset + world.base_scale * (gain * x + offset))
        wells.extend([well] * int(n))
    cells = pd.DataFrame(np.vstack(blocks).astype(np.float64))
    cells.insert(0, "well", wells)
    return cells


def write_cellprofiler_sqlite(spec: SyntheticSpec, plate: str, out: str | Path, sites_per_well: int = 4) -> dict:
    """Write one plate as CellProfiler's ExportToDatabase does (Per_Image, Per_Cells, Per_Cytoplasm, Per_Nuclei)."""
    cells = simulate_plate(spec, plate)
    names = feature_names(spec)
    rng = np.random.default_rng(_plate_seed(spec.seed, plate) + 1)
    wells = cells.pop("well").to_numpy()
    site = rng.integers(1, sites_per_well + 1, len(wells))
    keys = pd.DataFrame({"well": wells, "site": site})
    images = keys.drop_duplicates().sort_values(["well", "site"]).reset_index(drop=True)
    images["ImageNumber"] = np.arange(1, len(images) + 1)
    image_of_cell = keys.merge(images, on=["well", "site"], how="left")["ImageNumber"].to_numpy()
    order = np.lexsort((np.arange(len(wells)), image_of_cell))
    image_of_cell = image_of_cell[order]
    x = cells.to_numpy()[order]
    obj = np.ones(len(order), dtype=np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(image_of_cell)) + 1]
    for s, e in zip(starts, np.r_[starts[1:], len(order)]):
        obj[s:e] = np.arange(1, e - s + 1)
    f = spec.features_per_compartment
    with atomic_path(out) as tmp:
        con = sqlite3.connect(tmp)
        try:
            con.execute(
                "CREATE TABLE Per_Image (ImageNumber INTEGER PRIMARY KEY, Image_Metadata_Plate TEXT, "
                "Image_Metadata_Well TEXT, Image_Metadata_Site INTEGER, Image_Count_Cells INTEGER)"
            )
            n_per_image = np.bincount(image_of_cell, minlength=len(images) + 1)[1:]
            con.executemany(
                "INSERT INTO Per_Image VALUES (?, ?, ?, ?, ?)",
                [
                    (int(i), plate, w, int(s), int(n))
                    for i, w, s, n in zip(images["ImageNumber"], images["well"], images["site"], n_per_image)
                ],
            )
            for j, comp in enumerate(_COMPARTMENTS):
                links = ["Cytoplasm_Parent_Cells", "Cytoplasm_Parent_Nuclei"] if comp == "Cytoplasm" else []
                cols = ["ImageNumber", f"{comp}_Number_Object_Number", *links, *names[comp]]
                decl = ", ".join(f'"{c}" {"INTEGER" if i < 2 + len(links) else "REAL"}' for i, c in enumerate(cols))
                con.execute(f"CREATE TABLE Per_{comp} ({decl})")
                block = x[:, j * f : (j + 1) * f]
                ints = [image_of_cell, obj] + [obj] * len(links)
                rows = zip(*(a.tolist() for a in ints), *(block[:, i].tolist() for i in range(f)))
                con.executemany(f"INSERT INTO Per_{comp} VALUES ({', '.join('?' * len(cols))})", rows)
                con.execute(f"CREATE INDEX Per_{comp}_image ON Per_{comp} (ImageNumber)")
            con.commit()
        finally:
            con.close()
    return {"plate": plate, "n_cells": int(len(order)), "n_images": int(len(images))}


def write_platemap(spec: SyntheticSpec, out: str | Path) -> None:
    """The layout shared by all plates, as a profiling-recipe platemap (tab separated, ``well_position`` + annotations)."""
    with atomic_path(out) as tmp:
        platemap(spec).to_csv(tmp, sep="\t", index=False)
