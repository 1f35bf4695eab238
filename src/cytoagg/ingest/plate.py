"""The ingest step: one plate's source -> one per-cell Parquet, annotated from its platemap, rows by well."""

from __future__ import annotations

import gzip
import logging
import sqlite3
import zlib
from dataclasses import dataclass
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from ..io.columns import METADATA_PREFIX, Annotation, close_matches, metadata_columns
from ..io.files import InputError, atomic_path, available_cpus, read_names
from ..io.parquet import cell_writer, profile_schema, rows_per_group, to_arrow
from ..io.platemap import read_platemap
from ..settings import Settings
from .cellprofiler_csv import CellProfilerCsvSource
from .formats import FORMATS, detect_format
from .single_cell import SingleCellCsv, SingleCellParquet
from .source import Source, Tally, choose_features
from .sqlite import SqliteSource

logger = logging.getLogger(__name__)


def open_source(source: Path, fmt: str, compartments: Sequence[str], well_col: str, workdir: Path,
                hub: str | None = None, links: dict | None = None) -> Source:
    fmt = detect_format(source) if fmt == "auto" else fmt
    if fmt == "csv" and source.is_dir():  # "csv" names both CSV layouts; a folder means CellProfiler's
        fmt = "cp_csv"
    if fmt == "sqlite":
        return SqliteSource(source, compartments, well_col, hub, links)
    if fmt == "cp_csv":
        if not source.is_dir():
            raise InputError(f"{source}: fmt='cp_csv' needs a folder of CellProfiler CSV site folders")
        return CellProfilerCsvSource(source, compartments, well_col, workdir, hub, links)
    if fmt == "parquet":
        return SingleCellParquet(source, well_col, workdir=workdir)
    if fmt == "csv":
        return SingleCellCsv(source, well_col, workdir)
    raise InputError(f"{source}: unknown format {fmt!r} (expected auto or one of {FORMATS})")



def source_metadata_columns(source, fmt: str, compartments, well_col: str, hub=None, links=None) -> list[str]:
    """The ``Metadata_*`` columns a plate's source has (read from its header or schema only)."""
    source = Path(source)
    src = open_source(source, fmt, list(compartments), well_col, source.parent, hub, links)
    try:
        return metadata_columns(src.columns)
    finally:
        src.close()


def annotate(batch: pd.DataFrame, platemap: pd.DataFrame | None, well_col: str, tally: Tally) -> pd.DataFrame:
    """Add platemap annotations by well; cells of wells missing from the platemap are dropped and counted."""
    if platemap is None:
        return batch
    known = batch[well_col].isin(platemap.index)
    for well, n in batch.loc[~known, well_col].value_counts().items():
        tally.dropped_cells[well] = tally.dropped_cells.get(well, 0) + int(n)
    batch = batch.loc[known]
    wells = batch[well_col]
    return batch.assign(**{col: wells.map(platemap[col]).to_numpy() for col in platemap.columns})


def output_metadata(
    source_metadata: list[str], platemap: pd.DataFrame | None, plate_col: str, well_col: str
) -> list[str]:
    """Plate and well first, then the source's metadata, then platemap annotations (which win on a clash)."""
    annotations = [] if platemap is None else [c for c in platemap.columns if c not in (plate_col, well_col)]
    rest = [c for c in source_metadata if c not in (plate_col, well_col, *annotations)]
    return [plate_col, well_col, *rest, *annotations]


def _log_dropped(log: logging.Logger, path: Path, dropped: dict[str, list[str]]) -> None:
    for reason, names in dropped.items():
        if names:
            more = f" and {len(names) - 8} more" if len(names) > 8 else ""
            log.info("%s: dropped %d %s column(s): %s%s", path, len(names), reason, ", ".join(names[:8]), more)


@dataclass(frozen=True)
class IngestSettings(Settings):
    """What ingest needs of the config: ``dataset:`` (format, compartments, the features' file, blocklist), this
    plate's platemap file (resolved from ``dataset.platemap`` or the barcode platemap) and the metadata columns."""

    annotation: Annotation
    format: str  # auto | sqlite | csv | parquet
    platemap: str | None
    compartments: list[str]
    hub: str | None  # the compartment whose link columns join the others (None: Cytoplasm, else the first)
    links: dict  # compartment -> its link column in the hub (default <hub>_Parent_<compartment>)
    features_file: str | None  # the features to ingest, one per line (dataset.features_file, or a list the workflow
    # wrote from dataset.features); None: every feature of the compartments
    blocklist: list[str]
    max_cells_without_image: float  # share of cells whose image has no Image row dropped with a warning; above: error
    require_negcon: bool  # the plate must have a negative-control well (false: plates.without_negcon lists it)


def ingest_plate(source, out, plate: str, settings: IngestSettings, *, chunk_rows=50_000, workers=None, log=None) -> dict:
    """Write one plate's cells to ``out`` (Parquet, rows ordered by well) and return a summary.

    ``source`` is a CellProfiler SQLite file, a folder of CellProfiler CSV site folders, or a single-cell
    Parquet/CSV. ``plate`` is written to the plate column whatever the source says. A bad input raises
    ``InputError`` naming the file and column/table, and leaves no file at ``out``. ``workers``: processes
    reading a SQLite plate at once (default: the CPUs this process may use, at most 8).
    """
    log = log or logger
    source, out = Path(source), Path(out)
    plate_col, well_col = settings.annotation.plate_col, settings.annotation.well_col
    for col in (plate_col, well_col):
        if not col.startswith(METADATA_PREFIX):
            raise InputError(f"{col!r}: plate and well columns must start with {METADATA_PREFIX}")
    platemap_file = None if settings.platemap is None else Path(settings.platemap)
    annotations = None if platemap_file is None else read_platemap(platemap_file)
    try:
        src = open_source(source, settings.format, list(settings.compartments), well_col, out.parent,
                          settings.hub, settings.links)
        try:
            summary = _write(src, out, plate, annotations, settings, chunk_rows, _workers(workers), log)
        finally:
            src.close()
    except (sqlite3.DatabaseError, pa.ArrowException, pd.errors.ParserError, pd.errors.EmptyDataError,
            pd.errors.MergeError, UnicodeDecodeError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise InputError(f"{source}: cannot read ({type(e).__name__}: {e})") from e
    summary["platemap"] = None if platemap_file is None else str(platemap_file)
    return summary


def _write(src, out, plate, annotations, settings: IngestSettings, chunk_rows, workers, log):
    annotation = settings.annotation
    plate_col, well_col = annotation.plate_col, annotation.well_col
    compartments, blocklist = settings.compartments, settings.blocklist
    features = None if settings.features_file is None else read_names(settings.features_file)
    if well_col not in src.columns:
        raise InputError(f"{src.path}: no well column {well_col} (metadata: {metadata_columns(src.columns)})")
    kept, dropped = choose_features(src.columns, src.path, compartments, features, blocklist)
    _log_dropped(log, src.path, dropped)
    source_metadata = metadata_columns(src.columns)
    columns = output_metadata(source_metadata, annotations, plate_col, well_col)
    schema = profile_schema(pd.DataFrame(columns=[*columns, *kept]))
    read_metadata = [c for c in source_metadata if c in columns or c == plate_col]
    group_rows = rows_per_group(len(kept), chunk_rows)
    watched = _watched_columns(annotation, columns, src.path)
    tally = Tally()
    with atomic_path(out) as tmp, cell_writer(tmp, schema) as writer:
        if isinstance(src, SqliteSource):
            tables = src.arrow_batches(columns, kept, chunk_rows, plate, plate_col, annotations, tally, workers, log)
        else:
            tables = _pandas_batches(src, read_metadata, columns, kept, chunk_rows, plate, plate_col, annotations,
                                     well_col, tally, schema)
        pending, n_pending = [], 0
        for table in tables:  # written in row groups of group_rows cells
            _record_wells(table, well_col, watched, tally)
            check_values(table, kept, well_col, src.path)
            pending.append(table)
            n_pending += table.num_rows
            while n_pending >= group_rows:
                buffered = pa.concat_tables(pending)
                writer.write_table(buffered.slice(0, group_rows), row_group_size=group_rows)
                pending, n_pending = [buffered.slice(group_rows)], n_pending - group_rows
                del buffered
        if n_pending:
            writer.write_table(pa.concat_tables(pending), row_group_size=group_rows)
        del pending
        if not tally.cells_per_well:
            raise InputError(f"{src.path}: no cells to write (after matching wells with the platemap)")
        tally.orphans.update(getattr(src, "orphans", {}))
        _check_plate(src.path, plate, settings, tally, log)
    return _summarize(src, plate, kept, dropped, annotations, tally, log)


PLAUSIBLE_LIMIT = 1e20  # no CellProfiler measurement comes near it; random bytes read as float32 often do


def check_values(table: pa.Table, features: list[str], well_col: str, path) -> None:
    """Finite feature values beyond +-1e20 mean a damaged file, not a measurement: an error naming the feature and wells."""
    for name in features:
        start = 0
        for chunk in table.column(name).chunks:
            values = chunk.to_numpy(zero_copy_only=False)
            big = np.isfinite(values) & (np.abs(values) > PLAUSIBLE_LIMIT)
            if big.any():
                rows = start + np.flatnonzero(big)
                wells = sorted(set(table.column(well_col).take(pa.array(rows)).to_pylist()))
                raise InputError(
                    f"{path}: feature {name} has {int(big.sum())} value(s) beyond +-{PLAUSIBLE_LIMIT:g} (up to "
                    f"{float(np.abs(values[big]).max()):.3g}) in well(s) {wells[:10]}: no CellProfiler measurement is "
                    "that large; the file is probably damaged (a partial copy or overwritten bytes)"
                )
            start += len(chunk)


def _watched_columns(annotation: Annotation, columns: list[str], path) -> list[str]:
    """The annotation's columns ingest checks per well: the perturbation, and the negative-control column."""
    if annotation.perturbation_col not in columns:
        hint = close_matches(annotation.perturbation_col, columns)
        raise InputError(
            f"{path}: no column {annotation.perturbation_col!r} (metadata.perturbation) in the plate or its platemap"
            + (f"; did you mean {', '.join(map(repr, hint))}?" if hint else f"; metadata columns: {columns}")
        )
    watched = [annotation.perturbation_col]
    if annotation.negcon_value is not None:
        if annotation.negcon_col not in columns:
            hint = close_matches(annotation.negcon_col, columns)
            raise InputError(
                f"{path}: no column {annotation.negcon_col!r} (metadata.negcon_column) in the plate or its platemap"
                + (f"; did you mean {', '.join(map(repr, hint))}?" if hint else "")
            )
        watched.append(annotation.negcon_col)
    return list(dict.fromkeys(watched))


def _record_wells(table: pa.Table, well_col: str, watched: list[str], tally: Tally) -> None:
    """Each well's values of the watched columns (a well with two values keeps both, to be reported)."""
    frame = table.select([well_col, *watched]).to_pandas().drop_duplicates()
    for col in watched:
        seen = tally.well_values.setdefault(col, {})
        for well, value in zip(frame[well_col].astype(str), frame[col]):
            value = None if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "" \
                else str(value)
            seen.setdefault(well, set()).add(value)


def _check_plate(path, plate: str, settings: IngestSettings, tally: Tally, log) -> None:
    """What makes a plate unusable or its numbers silently wrong, found before its output is written."""
    annotation = settings.annotation
    n_cells = sum(tally.cells_per_well.values())
    n_orphans = sum(tally.orphans.values())
    if n_orphans:
        share = n_orphans / (n_cells + n_orphans)
        images = ", ".join(f"{k} ({n})" for k, n in list(tally.orphans.items())[:10])
        more = f" and {len(tally.orphans) - 10} more" if len(tally.orphans) > 10 else ""
        message = (f"{path}: {n_orphans} cell(s) ({share:.2%}) belong to {len(tally.orphans)} image(s) without a row in "
                   f"the Image table, so without a well: {images}{more}")
        if share > settings.max_cells_without_image:
            raise InputError(f"{message}; more than dataset.max_cells_without_image = "
                             f"{settings.max_cells_without_image:g}: a damaged or partial export?")
        log.warning("%s; dropped", message)
    perturbation = tally.well_values.get(annotation.perturbation_col, {})
    missing = sorted(w for w, values in perturbation.items() if None in values)
    if missing:
        raise InputError(f"{path}: {annotation.perturbation_col} (metadata.perturbation) is empty in well(s) "
                         f"{missing[:20]}{' ...' if len(missing) > 20 else ''}: fill it in the platemap (e.g. the "
                         "negative-control name) or remove those wells")
    mixed = sorted(w for w, values in perturbation.items() if len(values) > 1)
    if mixed:
        raise InputError(f"{path}: {annotation.perturbation_col} differs between the cells of well(s) {mixed[:20]}: "
                         "each well must hold one perturbation")
    if annotation.negcon_value is None:
        return
    values = tally.well_values.get(annotation.negcon_col, {})
    negcon = {w for w, v in values.items() if str(annotation.negcon_value) in v}
    if not negcon and settings.require_negcon:
        present = sorted({v for vs in values.values() for v in vs if v is not None})
        hint = close_matches(str(annotation.negcon_value), present)
        raise InputError(
            f"{path}: no well of plate {plate} has {annotation.negcon_col} == {annotation.negcon_value!r} "
            "(metadata.negcon_value)"
            + (f"; closest values present: {hint}" if hint else f"; values present include {present[:10]}")
            + ". A plate without controls on purpose goes in plates.without_negcon"
        )
    if negcon and negcon >= set(tally.cells_per_well):
        raise InputError(f"{path}: every well of plate {plate} is a negative control ({annotation.negcon_col} == "
                         f"{annotation.negcon_value!r}): no well to query; remove the plate from plates.train/validation")


def _pandas_batches(src, read_metadata, columns, kept, chunk_rows, plate, plate_col, annotations, well_col, tally,
                    schema) -> Iterator[pa.Table]:
    """The cells of a source's ``split_batches`` as final Arrow tables: the metadata annotated in pandas (cells of
    wells not in the platemap dropped), the float32 features straight into Arrow."""
    meta_schema = pa.schema([schema.field(c) for c in columns])
    for meta, values in src.split_batches(read_metadata, kept, chunk_rows):
        meta = meta.reset_index(drop=True)
        if plate_col in meta:
            tally.source_plates.update(meta[plate_col].dropna().astype(str).unique())
        n = len(meta)
        meta = annotate(meta.assign(**{plate_col: plate}), annotations, well_col, tally)
        if len(meta):
            tally.add(meta[well_col])
            rows = None if len(meta) == n else meta.index.to_numpy()
            arrays = to_arrow(meta[columns], meta_schema).columns
            arrays += [pa.array(v if rows is None else np.asarray(v)[rows], type=pa.float32()) for v in values]
            yield pa.Table.from_arrays(arrays, schema=schema)


def _workers(workers) -> int:
    if workers is None:
        return min(available_cpus(), 8)
    if int(workers) < 1:
        raise InputError(f"workers must be at least 1, got {workers!r}")
    return int(workers)


def _summarize(src, plate, kept, dropped, annotations, tally, log) -> dict:
    empty_wells = [] if annotations is None else [w for w in annotations.index if w not in tally.cells_per_well]
    if empty_wells:
        log.warning("%s: platemap wells without cells: %s", src.path, ", ".join(empty_wells))
    if tally.dropped_cells:
        log.warning(
            "%s: dropped %d cell(s) in wells missing from the platemap: %s",
            src.path, sum(tally.dropped_cells.values()), tally.dropped_cells,
        )
    if tally.source_plates - {plate}:
        log.info("%s: source names plate(s) %s; written as %r", src.path, sorted(tally.source_plates), plate)
    return {
        "plate": plate,
        "source": str(src.path),
        "format": src.format,
        "n_cells": sum(tally.cells_per_well.values()),
        "n_wells": len(tally.cells_per_well),
        "n_features": len(kept),
        "cells_per_well": dict(tally.cells_per_well),
        "dropped_features": dropped,
        "unmatched_wells": {"platemap_without_cells": empty_wells, "cells_without_platemap": dict(sorted(tally.dropped_cells.items()))},
        "n_dropped_cells": sum(tally.dropped_cells.values()),
        "source_plates": sorted(tally.source_plates),
    }
