"""Linking a plate's compartment tables into cells (pycytominer's merge: the Cytoplasm hub's parent columns)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import pandas as pd

from ..io.files import InputError
from .source import IMAGE_NUMBER, IMAGE_NUMBER_META, IMAGE_RANK, OBJECT_NUMBER


class Links(NamedTuple):
    """How compartment tables join: the hub's ``<hub>_Parent_<X>`` column points at X's object number."""

    hub: str
    parent: dict[str, str]  # compartment -> parent column in the hub table
    object_number: dict[str, str]  # compartment -> its object number column

    def columns(self, compartment: str) -> list[str]:
        cols = [IMAGE_NUMBER, self.object_number[compartment]]
        return cols + list(self.parent.values()) if compartment == self.hub else cols

    def cell_number(self) -> str:
        return self.object_number.get("Cells", self.object_number[self.hub])


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


def merge_objects(frames: dict[str, pd.DataFrame], links: Links) -> pd.DataFrame:
    """One row per hub object with a parent in every other compartment (inner joins, as pycytominer)."""
    cells = frames[links.hub]
    for compartment, parent in links.parent.items():
        cells = cells.merge(
            frames[compartment],
            left_on=[IMAGE_NUMBER, parent],
            right_on=[IMAGE_NUMBER, links.object_number[compartment]],
            how="inner",
            validate="many_to_one",
        )
    return cells


def attach_images(cells: pd.DataFrame, images: pd.DataFrame, links: Links) -> pd.DataFrame:
    """Add image metadata and object/image numbers; order by image rank, then object number."""
    cells = cells.merge(images, on=IMAGE_NUMBER, how="inner", validate="many_to_one")
    cells = cells.sort_values([IMAGE_RANK, links.object_number[links.hub]], kind="stable")
    numbers = pd.DataFrame(
        {
            IMAGE_NUMBER_META: cells[IMAGE_NUMBER].astype("int64").astype(str),
            OBJECT_NUMBER: cells[links.cell_number()].astype("int64").astype(str),
        },
        index=cells.index,
    )
    return pd.concat([cells, numbers], axis=1)


def compartment_features(features: Sequence[str], compartment: str) -> list[str]:
    return [f for f in features if f.startswith(f"{compartment}_")]
