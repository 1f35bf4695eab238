"""Linking a plate's compartment tables into cells (pycytominer's merge: the Cytoplasm hub's parent columns)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..io.files import InputError
from .source import IMAGE_NUMBER


class Links(NamedTuple):
    """How compartment tables join: the hub's ``<hub>_Parent_<X>`` column points at X's object number."""

    hub: str
    parent: dict[str, str]  # compartment -> parent column in the hub table
    object_number: dict[str, str]  # compartment -> its object number column

    def columns(self, compartment: str) -> list[str]:
        cols = [IMAGE_NUMBER, self.object_number[compartment]]
        return cols + list(self.parent.values()) if compartment == self.hub else cols

    def cell_number_compartment(self) -> str:
        """The compartment whose object number names a cell: Cells, else the hub."""
        return "Cells" if "Cells" in self.object_number else self.hub

    def cell_number(self) -> str:
        return self.object_number[self.cell_number_compartment()]


def object_number_column(columns: Sequence[str], compartment: str, where: str) -> str:
    for name in (f"{compartment}_Number_Object_Number", f"{compartment}_ObjectNumber"):
        if name in columns:
            return name
    raise InputError(f"{where}: no object number column {compartment}_Number_Object_Number")


def link_compartments(columns: dict[str, list[str]], where: dict[str, str], hub: str | None = None,
                      links: dict[str, str] | None = None) -> Links:
    """How the compartments join (config ``dataset.hub`` and ``dataset.links``). The default is pycytominer's
    merge: Cytoplasm is the hub, linked to Cells and Nuclei by its parent columns (``Cytoplasm_Parent_Cells``);
    other segmentations (e.g. JUMP's ``Cells_Cellpose3``) name their hub and link columns."""
    hub = hub or ("Cytoplasm" if "Cytoplasm" in columns else next(iter(columns)))
    links = dict(links or {})
    if hub not in columns:
        raise InputError(f"dataset.hub {hub!r} is not one of dataset.compartments {list(columns)}")
    unknown = sorted(set(links) - set(columns) - {hub})
    if unknown:
        raise InputError(f"dataset.links names {unknown}, which are not in dataset.compartments {list(columns)}")
    parent = {}
    for compartment in columns:
        if IMAGE_NUMBER not in columns[compartment]:
            raise InputError(f"{where[compartment]}: no column {IMAGE_NUMBER}")
        if compartment != hub:
            parent[compartment] = links.get(compartment, f"{hub}_Parent_{compartment}")
            if parent[compartment] not in columns[hub]:
                raise InputError(f"{where[hub]}: no column {parent[compartment]} to link {compartment} to {hub} "
                                 "(dataset.links)")
    numbers = {c: object_number_column(cols, c, where[c]) for c, cols in columns.items()}
    return Links(hub, parent, numbers)


KEY_SHIFT = 2**32  # (ImageNumber, object number) as one int64: image * KEY_SHIFT + object


def object_numbers(column: pa.ChunkedArray) -> np.ndarray:
    """A column of image or object numbers as float64 (missing: NaN)."""
    return pc.cast(column, pa.float64()).to_numpy()


def object_keys(images: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """(ImageNumber, object number) pairs as one int64 key; -1 (matching nothing) where either is missing or not
    a whole number in range, as SQL's join leaves NULL keys unmatched."""
    valid = (np.isfinite(images) & np.isfinite(objects) & (images == np.floor(images)) & (objects == np.floor(objects))
             & (images >= 0) & (images < 2**31) & (objects >= 0) & (objects < KEY_SHIFT))
    keys = np.full(len(images), -1, np.int64)
    keys[valid] = images[valid].astype(np.int64) * KEY_SHIFT + objects[valid].astype(np.int64)
    return keys


def join_objects(tables: dict[str, pa.Table], links: Links, paths: dict[str, object]) -> dict[str, np.ndarray]:
    """pycytominer's merge (inner joins) as row numbers: for each hub object with a parent in every other
    compartment (hub order), its row in each compartment's table. An object number repeated within an image is an
    InputError naming the file (the merge would duplicate cells)."""
    hub = tables[links.hub]
    hub_images = object_numbers(hub.column(IMAGE_NUMBER))
    _sorted_object_keys(hub, links.object_number[links.hub], paths[links.hub])  # the hub's objects are unique too
    rows = {links.hub: np.arange(hub.num_rows)}
    keep = np.ones(hub.num_rows, bool)
    for compartment, parent in links.parent.items():
        sorter, ordered = _sorted_object_keys(tables[compartment], links.object_number[compartment], paths[compartment])
        wanted = object_keys(hub_images, object_numbers(hub.column(parent)))
        if not len(ordered):
            keep[:] = False
            rows[compartment] = np.zeros(hub.num_rows, np.int64)
            continue
        at = np.searchsorted(ordered, wanted).clip(max=len(ordered) - 1)
        keep &= (wanted >= 0) & (ordered[at] == wanted)
        rows[compartment] = sorter[at]
    return {c: r[keep] for c, r in rows.items()}


def _sorted_object_keys(table: pa.Table, number: str, path) -> tuple[np.ndarray, np.ndarray]:
    """The table's (ImageNumber, ``number``) keys: (the order that sorts them, sorted). A repeated object is an
    InputError naming ``path``."""
    keys = object_keys(object_numbers(table.column(IMAGE_NUMBER)), object_numbers(table.column(number)))
    sorter = np.argsort(keys, kind="stable")
    ordered = keys[sorter]
    repeated = ordered[1:][(ordered[1:] == ordered[:-1]) & (ordered[1:] >= 0)]
    if len(repeated):
        raise InputError(f"{path}: {number} {repeated[0] % KEY_SHIFT} repeats within ImageNumber "
                         f"{repeated[0] // KEY_SHIFT}: each object must have one row")
    return sorter, ordered


def compartment_features(features: Sequence[str], compartment: str) -> list[str]:
    return [f for f in features if f.startswith(f"{compartment}_")]
