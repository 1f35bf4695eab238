"""``cytoagg init <data path pattern>``: a complete, commented config written from inspecting the plates.

It finds the plates the pattern matches (``{plate}`` marks the plate name), reads each one's layout (format,
metadata columns, features) and its wells (cells per well, each well's metadata, with the platemap's where one
is given), and writes a config that runs: the plate split, the metadata columns, the perturbation column and
its negative control, the features (``common`` where the plates differ), the normalization (``none`` for
values that look normalized already), training sizes that fit the wells. What the data cannot decide is
asked in the file: ``# QUESTION:`` comments with the alternatives and their counts, beside the value written.
"""

from __future__ import annotations

import glob
import json
import logging
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from .config import PLATE_NAME
from .io.columns import COMPARTMENTS, metadata_columns
from .io.files import InputError, write_text
from .io.platemap import BARCODE, platemap_file, read_delimited, read_platemap

logger = logging.getLogger(__name__)

# Names that usually hold the treatment of a well, and values that usually mark negative controls.
PERTURBATION_HINTS = ("broad_sample", "pert_iname", "pert_id", "perturbation", "treatment", "compound", "cpd",
                      "jcp2022", "inchikey", "smiles", "drug", "gene", "genotype", "sirna", "orf", "crispr", "condition")
NEGCON_HINTS = re.compile(r"^(dmso|negcon|neg_con|negative_?control|control|ctrl|untreated|vehicle|mock|empty|"
                          r"no_?treatment|none|non-?targeting|pbs|water|h2o)$", re.I)
# Words in the names of metadata that say where or how a well was imaged, never its treatment.
POSITION_WORDS = {"well", "row", "col", "column", "site", "field", "image", "object", "number", "plate", "barcode",
                  "location", "table", "x", "y", "z", "time", "date", "batch", "path", "file", "url", "channel",
                  "position", "index", "id"}
CELLS_PER_SET_MAX = 1500  # the paper's set size (train.cells_mean's default)


@dataclass
class PlateInfo:
    name: str
    path: str
    format: str
    metadata: list[str]
    features: list[str]
    wells: pd.DataFrame | None = None  # one row per well: its metadata (constant within the well) and n_cells
    note: str = ""


@dataclass
class Candidate:
    column: str
    n_values: int
    n_replicated: int  # values with 2 or more wells
    top: list[tuple[str, int]] = field(default_factory=list)  # most common values and their wells
    hinted: bool = False


# ----------------------------------------------------------------------------------------------- finding plates


def find_plates(pattern: str) -> tuple[dict[str, str], list[str]]:
    """Plate name -> path for every file or folder ``pattern`` matches (``{plate}`` is the name, which may appear
    more than once, e.g. ``data/{plate}/{plate}.sqlite``), and the names skipped as invalid plate names."""
    if "{plate}" not in pattern:
        raise InputError(f"{pattern!r}: the data path pattern needs {{plate}} where each plate's name is, e.g. "
                         "'data/{plate}.sqlite' or 'profiles/{plate}/{plate}.parquet'")
    parts = pattern.split("{plate}")
    regex = "".join(re.escape(p) + ("(?P<plate>[^/]+?)" if i == 0 else "(?P=plate)") * (i < len(parts) - 1)
                    for i, p in enumerate(parts))
    found, skipped = {}, []
    for path in sorted(glob.glob(glob.escape(pattern).replace(glob.escape("{plate}"), "*"))):
        m = re.fullmatch(regex, path)
        if m is None:
            continue
        name = m["plate"]
        if re.fullmatch(PLATE_NAME, name):
            found[name] = path
        else:
            skipped.append(name)
    if not found:
        raise InputError(f"{pattern!r} matches no plate (looked for {pattern.replace('{plate}', '*')!r})"
                         + (f"; names that are not valid plate names: {skipped}" if skipped else ""))
    return dict(sorted(found.items(), key=lambda kv: _natural(kv[0]))), skipped


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


# ----------------------------------------------------------------------------------------------- one plate


def inspect_plate(name: str, path: str, fmt: str, compartments: Sequence[str], platemap: str | None) -> PlateInfo:
    """A plate's format, metadata columns, features, and its wells (from its own metadata and its platemap)."""
    from .ingest.formats import detect_format
    from .ingest.plate import open_source
    from .ingest.source import choose_features

    source = Path(path)
    fmt = detect_format(source) if fmt == "auto" else fmt
    src = open_source(source, fmt, list(compartments), "Metadata_Well", source.parent)
    try:
        columns = list(src.columns)
        features, _ = choose_features(columns, source, compartments)
        info = PlateInfo(name, path, src.format, metadata_columns(columns), features)
        well_col = _well_column(info.metadata)
        if well_col is None:
            info.note = f"no well column among its metadata ({', '.join(info.metadata[:12])})"
            return info
        src.well_col = well_col
        wells = _sqlite_wells(src, well_col) if src.format == "sqlite" else _source_wells(src, info.metadata, well_col)
    finally:
        src.close()
    if platemap is not None:
        annotations = read_platemap(platemap)
        wells = wells.drop(columns=[c for c in annotations.columns if c in wells.columns and c != well_col])
        wells = wells.join(annotations, on=well_col)
    info.wells = wells.rename(columns={well_col: "Metadata_Well"}) if well_col != "Metadata_Well" else wells
    return info


def _well_column(metadata: list[str]) -> str | None:
    if "Metadata_Well" in metadata:
        return "Metadata_Well"
    named = [c for c in metadata if c.lower().removeprefix("metadata_") in ("well", "well_position", "wellposition")]
    return named[0] if named else None


def _per_well(cells: pd.DataFrame, well_col: str) -> pd.DataFrame:
    """One row per well: the columns constant within every well (as text), and n_cells (the weights' sum)."""
    cells = cells.astype({c: "string" for c in cells.columns if c not in (well_col, "_n")})
    grouped = cells.groupby(well_col, sort=True)
    constant = [c for c in cells.columns if c not in (well_col, "_n") and (grouped[c].nunique(dropna=False) <= 1).all()]
    wells = grouped[constant].first()
    wells["n_cells"] = grouped["_n"].sum().astype(int)
    return wells.reset_index()


def _source_wells(src, metadata: list[str], well_col: str) -> pd.DataFrame:
    """Every cell's metadata from a source's batches (as ingest reads it; wells named like A01)."""
    wanted = [c for c in metadata if c != "Metadata_ObjectNumber"]
    parts = [batch[wanted] for batch in src.batches(wanted, [], 200_000)]
    cells = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=wanted)
    return _per_well(cells.assign(_n=1), well_col)


def _sqlite_wells(src, well_col: str) -> pd.DataFrame:
    """A CellProfiler SQLite plate's image metadata and its cells per image (objects of the compartment the
    others link to), without reading any cell."""
    from .ingest.source import normalize_wells

    con = sqlite3.connect(f"{src.path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        key = ["TableNumber", "ImageNumber"] if src.keyed else ["ImageNumber"]
        quoted = lambda n: '"' + n.replace('"', '""') + '"'  # noqa: E731
        cols = ", ".join(f"CAST({quoted(c)} AS TEXT) AS {quoted(n)}" for c, n in src.image_metadata.items())
        images = pd.read_sql_query(f"SELECT {', '.join(key)}, {cols} FROM {quoted(src.image_table)}", con)
        hub = quoted(src.tables[src.links.hub])
        counts = pd.read_sql_query(f"SELECT {', '.join(key)}, COUNT(*) AS _n FROM {hub} GROUP BY {', '.join(key)}", con)
    finally:
        con.close()
    images = images.merge(counts, on=key, how="left").fillna({"_n": 0}).drop(columns=key)
    images[well_col] = normalize_wells(images[well_col], src.path, well_col)
    return _per_well(images, well_col)


def looks_normalized(path: str, features: list[str], fmt: str, n_features: int = 60, n_cells: int = 5000) -> tuple[bool, str]:
    """Whether a single-cell table's features look normalized upstream already (pycytominer: per-feature median
    near 0 and spread near 1), from a sample of features and cells; the numbers said in a comment."""
    if fmt not in ("parquet", "csv") or not features:
        return False, "raw CellProfiler output"
    step = max(1, len(features) // n_features)
    sample = features[::step][:n_features]
    if fmt == "parquet":
        pf = pq.ParquetFile(path)
        x = pf.read_row_group(0, columns=sample).to_pandas().to_numpy(np.float64)[:n_cells]
    else:
        x = pd.read_csv(path, usecols=sample, nrows=n_cells).to_numpy(np.float64)
    with np.errstate(all="ignore"):
        med = np.nanmedian(x, axis=0)
        spread = 1.4826 * np.nanmedian(np.abs(x - med), axis=0)
        iqr_sd = (np.nanpercentile(x, 75, axis=0) - np.nanpercentile(x, 25, axis=0)) / 1.349
    ok = np.isfinite(med) & np.isfinite(spread)
    if not ok.any():
        return False, "no finite values in the sampled features"
    m, s = float(np.median(np.abs(med[ok]))), float(np.median(np.where(spread[ok] > 0, spread[ok], iqr_sd[ok])))
    said = (f"over {int(ok.sum())} sampled features of {Path(path).name}: median |median| {m:.2g}, median spread "
            f"(1.4826 MAD) {s:.2g}")
    return bool(m < 0.5 and 0.3 < s < 3), said


# ----------------------------------------------------------------------------------------------- across plates


def is_position(column: str) -> bool:
    """``Metadata_WellRow``, ``Metadata_Site``, ``Metadata_ImageNumber``: a name made of position words only,
    or one that names a well, site, row or column."""
    words = [w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", column.removeprefix("Metadata_"))]
    words = [w.rstrip("s") if len(w) > 3 else w for w in words if not w.isdigit()]
    return not words or all(w in POSITION_WORDS for w in words) or bool({"well", "site", "row", "col"} & set(words))


def perturbation_candidates(wells: pd.DataFrame) -> list[Candidate]:
    """Metadata columns that could hold the treatment: several values over the wells, some of them in 2 or more
    wells, not a position; named like a treatment first, then by how many values are replicated."""
    out = []
    for col in wells.columns:
        if col in ("Metadata_Well", "Metadata_Plate", "n_cells", "_plate") or is_position(col):
            continue
        values = wells[col].dropna().astype(str)
        values = values[values.str.strip() != ""]
        if len(values) < len(wells):  # empty in some wells: ingest refuses that for the perturbation
            continue
        counts = values.value_counts()
        if len(counts) < 2 or len(counts) == len(values):
            continue
        hinted = any(h in col.lower() for h in PERTURBATION_HINTS)
        out.append(Candidate(col, len(counts), int((counts >= 2).sum()), list(counts.head(5).items()), hinted))
    return sorted(out, key=lambda c: (not c.hinted, -c.n_replicated, c.n_values))


def negcon_candidates(wells: pd.DataFrame, column: str) -> list[tuple[str, int]]:
    counts = wells[column].astype(str).value_counts()
    return [(v, int(n)) for v, n in counts.items() if NEGCON_HINTS.match(v.strip())]


# ----------------------------------------------------------------------------------------------- the config


def _yaml(value) -> str:
    return json.dumps(value)


def _split(plates: list[str]) -> tuple[list[str], list[str]]:
    """About a quarter of the plates (at least one, when there are 2 or more) held out as validation plates."""
    n_val = 0 if len(plates) < 2 else max(1, round(len(plates) / 4))
    return plates[: len(plates) - n_val], plates[len(plates) - n_val:]


def _even(n: float) -> int:
    return max(2, int(round(n / 2)) * 2)


def build_config(pattern: str, plates: dict[str, PlateInfo], skipped: list[str], platemap_keys: dict,
                 results: str, compartments: Sequence[str]) -> str:
    """The config's text."""
    infos = list(plates.values())
    names = list(plates)
    formats = sorted({i.format for i in infos})
    q: list[str] = []  # the questions, repeated at the top

    def question(text: str, short: str | None = None) -> str:
        q.append(short or text)
        return f"# QUESTION: {text}"

    lines = [
        f"results: {_yaml(results)}",
        "",
        "dataset:",
        f"  path: {_yaml(pattern)}",
        f"  format: auto  # found: {', '.join(formats)}",
    ]
    for key in ("platemap", "barcode_platemap", "platemap_dir"):
        if platemap_keys.get(key):
            lines.append(f"  {key}: {_yaml(platemap_keys[key])}")
    if not any(platemap_keys.values()):
        lines.append("  # platemap: metadata/platemap.csv            # one platemap (well_position + annotations) for "
                     "every plate, or:")
        lines.append("  # barcode_platemap: metadata/barcode_platemap.csv  # profiling-recipe layout, with")
        lines.append("  # platemap_dir: metadata/platemap                  # <Plate_Map_Name>.txt inside")
    if list(compartments) != list(COMPARTMENTS):
        lines.append(f"  compartments: {_yaml(list(compartments))}")

    # features
    sets = [set(i.features) for i in infos]
    common = set.intersection(*sets) if sets else set()
    sizes = [len(s) for s in sets]
    if len(set(map(frozenset, sets))) > 1:
        lost = [(i.name, len(set(i.features) - common)) for i in infos if len(set(i.features) - common)]
        lines += [f"  # The plates have {min(sizes)} to {max(sizes)} features, {len(common)} of them on every plate. Not "
                  "on every plate, per plate:"]
        lines += [f"  #   {name}: {n}" for name, n in lost[:10]] + (["  #   ..."] if len(lost) > 10 else [])
        lines += ["  # 'common' keeps the features every configured plate has (rule common_features lists the rest in",
                  f"  # {results}/common_features_dropped.csv).",
                  "  features: common"]
    else:
        same = f"all {len(infos)} plates have the same" if len(infos) > 1 else "the plate has"
        lines += [f"  # {same} {len(common)} features",
                  "  features: null  # null: every feature; or common; or features_file: a file with one name per line"]
    lines.append("")

    # wells and metadata
    tables = [i.wells.assign(_plate=i.name) for i in infos if i.wells is not None]
    no_wells = [i for i in infos if i.wells is None]
    wells = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    lines.append("metadata:")
    lines.append("  plate: Metadata_Plate  # ingest writes each plate's name (from the path) in this column")
    lines.append("  well: Metadata_Well")
    candidates = perturbation_candidates(wells) if len(wells) else []
    negcon, negcon_note = None, ""
    if candidates:
        best = candidates[0]
        if len(candidates) > 1:
            lines.append("  " + question("which metadata column holds each well's treatment (whose replicate wells "
                                         "should match)? Candidates (values; values in 2+ wells; most common):",
                                         f"metadata.perturbation: {', '.join(c.column for c in candidates[:6])}?"))
            for c in candidates[:6]:
                top = ", ".join(f"{v} ({n})" for v, n in c.top[:3])
                lines.append(f"  #   {c.column}: {c.n_values} values, {c.n_replicated} in 2+ wells; {top}")
        else:
            lines.append(f"  # {best.column}: {best.n_values} values, {best.n_replicated} of them in 2 or more wells")
        lines.append(f"  perturbation: {_yaml(best.column)}")
        controls = negcon_candidates(wells, best.column)
        if len(controls) == 1:
            negcon = controls[0][0]
            negcon_note = f"# {controls[0][1]} wells"
        elif len(controls) > 1:
            lines.append("  " + question("which value marks the negative-control wells? Candidates (wells): "
                                         + ", ".join(f"{v} ({n})" for v, n in controls)))
            negcon = controls[0][0]
        else:
            common_values = ", ".join(f"{v} ({n})" for v, n in best.top[:4])
            lines.append("  " + question(f"no value of {best.column} looks like a negative control (most common: "
                                         f"{common_values}). Name it here if there is one; null: no controls."))
        lines.append(f"  negcon_value: {_yaml(negcon)}  {negcon_note}".rstrip())
    else:
        meta = sorted({c for i in infos for c in i.metadata} | set(wells.columns) - {"n_cells", "_plate"})
        lines.append("  " + question("no metadata column varies between wells with replicates: add a platemap "
                                     "(dataset.platemap) and name its treatment column here. Metadata columns: "
                                     + ", ".join(meta[:15])))
        lines.append("  perturbation: Metadata_broad_sample")
        lines.append("  negcon_value: null")
    lines.append("")

    # plates
    train, validation = _split(names)
    lines.append("plates:")
    counts = []
    for i in infos:
        if i.wells is not None:
            n = i.wells["n_cells"]
            counts.append(f"{i.name}: {len(i.wells)} wells, {int(n.sum())} cells ({int(n.median())} per well)")
        else:
            counts.append(f"{i.name}: {i.note or 'wells not read'}")
    lines += [f"  # {c}" for c in counts]
    if skipped:
        lines.append(f"  # skipped (not valid plate names: letters, digits, _ - and single dots): {', '.join(skipped)}")
    if len(names) == 1:
        lines.append("  # one plate: every number is in-sample for that plate (the tables say so)")
    else:
        lines.append("  " + question("which plates should the model never see (validation plates)? Written: the last "
                                     f"{len(validation)} of {len(names)}"))
    lines.append(f"  train: {_yaml(train)}")
    lines.append(f"  validation: {_yaml(validation)}")
    without = []
    if negcon is not None and tables:
        per_plate = wells.groupby("_plate")[candidates[0].column].apply(lambda s: (s.astype(str) == negcon).any())
        without = [p for p in names if p in per_plate.index and not per_plate[p]]
        if without:
            lines.append(f"  # no {negcon} well on these plates:")
    lines.append(f"  without_negcon: {_yaml(without)}")
    lines.append("")

    # compounds
    if candidates:
        values = wells[candidates[0].column].astype(str)
        counts_v = values[values != str(negcon)].value_counts()
        replicated = int((counts_v >= 2).sum())
        lines.append("compounds:")
        if replicated < 8:
            lines.append(f"  # only {replicated} treatment(s) with replicate wells: none held out of training (0), "
                         "so every number is on compounds the model was trained on (the tables say so)")
            lines.append("  validation: 0")
        else:
            lines.append(f"  # {replicated} treatments with replicate wells; a quarter held out of training, by a "
                         "seeded hash of the name")
            lines.append("  validation: 0.25")
        lines.append("")

    # normalization
    flags = [looks_normalized(i.path, i.features, i.format) for i in infos[:1]]
    lines.append("normalize:")
    if flags and flags[0][0]:
        lines.append(f"  # the values look normalized upstream already ({flags[0][1]})")
        lines.append("  " + question("are the plates normalized already (e.g. pycytominer normalize)? none keeps "
                                     "their values; mad_robustize normalizes each plate again"))
        lines.append("  method: none")
    else:
        note = flags[0][1] if flags else ""
        lines.append(f"  # per-plate normalization of the cells ({note})" if note else "  # per-plate normalization")
        lines.append("  method: mad_robustize")
    lines.append("")

    # training sizes from the wells
    if tables:
        per_well = float(np.median(wells["n_cells"]))
        mean = float(min(CELLS_PER_SET_MAX, max(20, _even(per_well))))
        lines += [
            "train:",
            f"  # sets of about the median cells per well ({per_well:.0f}); the paper: N(1500, 800), >= 100",
            f"  cells_mean: {mean:g}",
            f"  cells_std: {mean / 2:g}",
            f"  cells_min: {min(100, _even(mean / 5))}",
            "  # epochs: 100     # the paper's; fewer for a first look (a step takes seconds on a CPU at the paper's sizes)",
            "  # device: auto    # CUDA when present",
            "",
        ]
    evaluate = []
    if negcon is None:
        evaluate += ["  # no negative controls: the profile pipelines that normalize against them are off",
                     "  pipelines: [raw]"]
    # the filtered_mean baseline keeps the cells above a quantile of their area: an area every plate has
    area = next((f"{c}_AreaShape_Area" for c in compartments if f"{c}_AreaShape_Area" in common), None)
    if area:
        evaluate += ["  filtered_mean:", f"    feature: {area}  # the cell area the filtered_mean baseline filters on"]
    else:
        evaluate += ["  # no <compartment>_AreaShape_Area on every plate: the filtered_mean baseline (cells filtered on",
                     "  # their area) is left out; name another feature under filtered_mean: to keep it",
                     "  baselines: [mean, median, mean_std, mean_cov]"]
    lines += ["evaluate:", *evaluate, ""]
    header = [
        f"# cytoagg config written by `cytoagg init {pattern}` from {len(names)} plate(s).",
        "# Run: snakemake --cores 2 --configfile THIS_FILE   (every key left out takes the default documented in",
        "# workflow/schemas/config.schema.yaml; the demo config.yaml is not read when --configfile is given).",
    ]
    header += [f"# {i.name}: {i.note}" for i in no_wells]
    if q:
        header.append("# Lines starting with '# QUESTION:' are what the data could not decide; check the value below "
                      "each:")
        header += [f"#  {n}. {text}" for n, text in enumerate(q, 1)]
    return "\n".join([*header, "", *lines]).rstrip() + "\n"


def init_config(pattern: str, out, *, fmt: str = "auto", compartments: Sequence[str] = COMPARTMENTS,
                platemap: str | None = None, barcode_platemap: str | None = None, platemap_dir: str | None = None,
                results: str = "results", force: bool = False) -> str:
    """Inspect the plates ``pattern`` matches and write the config to ``out``; returns its text."""
    out = Path(out)
    if out.exists() and not force:
        raise InputError(f"{out} exists: choose another --out, or --force to overwrite it")
    if (barcode_platemap is None) != (platemap_dir is None):
        raise InputError("--barcode-platemap and --platemap-dir go together")
    found, skipped = find_plates(pattern)
    logger.info("%d plate(s) match %s: %s", len(found), pattern, ", ".join(list(found)[:10]))
    keys = dict(platemap=platemap, barcode_platemap=barcode_platemap, platemap_dir=platemap_dir)
    if barcode_platemap is not None:
        known = set(read_delimited(barcode_platemap).get(BARCODE, pd.Series(dtype=str)).astype(str))
        logger.info("%s names %d plate barcode(s)", barcode_platemap, len(known))
    plates = {}
    for name, path in found.items():
        maps = platemap_file(name, **keys)
        plates[name] = inspect_plate(name, path, fmt, compartments, None if maps is None else str(maps))
        info = plates[name]
        logger.info("%s: %s, %d features, %s", name, info.format, len(info.features),
                    f"{len(info.wells)} wells" if info.wells is not None else info.note)
    text = build_config(pattern, plates, skipped, keys, results, compartments)
    write_text(text, out)
    return text
