"""Well profiles as AnnData (``.h5ad``): one file per method holding every plate of the run, which scanpy and
the other scverse tools open directly.

- ``obs``: the profiles' ``Metadata_*`` columns, as categoricals (a plate that lacks a column another plate
  has gets missing values there), indexed ``<plate>_<well>``;
- ``var``: the feature names, in the profiles' column order (every plate must have the same ones);
- ``X``: the profiles, float32, plates in the order given and each plate's rows in its file's order;
- ``uns["cytoagg"]``: what the file holds (``method``, ``pipeline``) and the cytoagg version that wrote it.

``X`` is written one plate at a time into the HDF5 file, so memory holds the metadata of all plates but the
features of one plate only: a run of thousands of plates exports in bounded memory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..io.columns import Annotation, metadata_columns
from ..io.files import InputError, atomic_path, write_text
from ..io.parquet import parquet_columns, read_profiles

logger = logging.getLogger(__name__)

# The on-disk encoding of a dense array in an .h5ad file (anndata's format, "array" 0.2.0): X is written
# by h5py plate by plate, so it carries the attributes anndata itself would give it.
DENSE_ARRAY_ATTRS = {"encoding-type": "array", "encoding-version": "0.2.0"}


def _plate_columns(path: Path) -> tuple[list[str], list[str]]:
    """Metadata and feature columns of one profile file (an InputError naming it if it is not one)."""
    try:
        names = parquet_columns(path)
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"{path}: not a readable profile Parquet ({e})") from e
    meta = metadata_columns(names)
    return meta, [c for c in names if c not in set(meta)]


def _obs(files: Sequence[Path], meta_cols: list[list[str]], annotation: Annotation) -> pd.DataFrame:
    """Every plate's metadata, stacked: the union of their columns (first-seen order), as categoricals."""
    tables = [pq.read_table(f, columns=cols) for f, cols in zip(files, meta_cols)]
    for f, cols in zip(files, meta_cols):
        for col in (annotation.plate_col, annotation.well_col):
            if col not in cols:
                raise InputError(f"{f}: no column {col!r} (config metadata: plate/well)")
    table = pa.concat_tables(tables, promote_options="default")  # a column missing from a plate: nulls there
    obs = pd.DataFrame(
        {name: pd.Categorical(table.column(name).to_pandas().astype(object)) for name in table.column_names}
    )
    names = obs[annotation.plate_col].astype(str) + "_" + obs[annotation.well_col].astype(str)
    duplicated = names[names.duplicated()].unique()
    if len(duplicated):
        raise InputError(f"the same plate and well in several profile rows: {list(duplicated[:5])}")
    obs.index = pd.Index(names.to_numpy(), dtype=object)
    return obs


def export_anndata(
    profile_files: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    annotation: Annotation,
    method: str,
    pipeline: str,
) -> dict:
    """Write the profiles of ``profile_files`` (one Parquet per plate, all of one method through one pipeline) as
    one ``.h5ad``."""
    import anndata as ad
    import h5py

    from .. import __version__

    files = [Path(f) for f in profile_files]
    if not files:
        raise InputError("export-anndata: no profile files given")
    columns = [_plate_columns(f) for f in files]
    features = columns[0][1]
    for f, (_, feats) in zip(files[1:], columns[1:]):
        if feats != features:
            diff = sorted(set(feats) ^ set(features))[:5]
            raise InputError(
                f"{f}: its features differ from those of {files[0]} "
                f"({'e.g. ' + str(diff) if diff else 'same names, another order'}): one AnnData needs the same features"
            )
    obs = _obs(files, [meta for meta, _ in columns], annotation)
    var = pd.DataFrame(index=pd.Index(features, dtype=object))
    uns = {"cytoagg": {"method": method, "pipeline": pipeline, "version": __version__}}
    with atomic_path(out) as tmp:
        ad.AnnData(obs=obs, var=var, uns=uns).write_h5ad(tmp)  # everything but X
        with h5py.File(tmp, "a") as h5:
            x = h5.create_dataset("X", shape=(len(obs), len(features)), dtype=np.float32)
            x.attrs.update(DENSE_ARRAY_ATTRS)
            start = 0
            for f in files:
                _, block, _ = read_profiles(f, features)
                x[start : start + len(block)] = block
                start += len(block)
            if start != len(obs):  # a file changed between the two reads
                raise InputError(f"profile files changed while being exported ({start} rows vs {len(obs)})")
    summary = {"method": method, "pipeline": pipeline, "plates": len(files), "wells": len(obs), "features": len(features),
               "obs_columns": list(obs.columns)}
    logger.info("%s: %s", out, summary)
    return summary


def export_step(sources: dict, outputs: dict, params: str, log) -> list[dict]:
    """The export_anndata rule (a ``run:`` directive: one call, no process per file): every profile key's files
    (``sources``: key -> one path per plate; a per-plate pipelines' folder stands for its file of that key) to its
    ``.h5ad`` (``outputs``: key -> path). ``params``: the rule's settings JSON (the metadata columns); ``log``: a
    line per file written."""
    from ..settings import read_params
    from .pipelines import pipeline_file, split_key

    annotation = Annotation.from_params(read_params(params)["annotation"], "export_anndata annotation")
    summaries, lines = [], []
    for key, out in outputs.items():
        method, pipeline = split_key(key)
        files = [pipeline_file(p, method, pipeline) if Path(p).is_dir() else Path(p) for p in sources[key]]
        summaries.append(export_anndata(files, out, annotation, method, pipeline))
        lines.append(f"{out}: {summaries[-1]}\n")
    write_text("".join(lines), log)
    return summaries
