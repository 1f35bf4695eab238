"""Shared fixtures: a tiny synthetic screen, normalized, as the training/embedding steps read it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cytoagg.io.parquet import write_profiles
from cytoagg.synthetic.screen import SyntheticSpec, feature_names, platemap, simulate_plate
from helpers import synthetic_spec

TINY = synthetic_spec(n_compounds=24, replicates=4, negcon_wells=8, cells_per_well=40, features_per_compartment=6, n_latent=6)


def normalized_plate(spec: SyntheticSpec, plate: str) -> pd.DataFrame:
    """Cells of a synthetic plate, MAD-robustized per plate, in the workflow's normalized layout."""
    cells = simulate_plate(spec, plate)
    names = [n for v in feature_names(spec).values() for n in v]
    x = cells.drop(columns="well").to_numpy()
    med = np.median(x, axis=0)
    x = (x - med) / (1.4826 * np.median(np.abs(x - med), axis=0))
    pm = platemap(spec).set_index("well_position")
    df = pd.DataFrame(x, columns=names)
    df.insert(0, "Metadata_Plate", plate)
    df.insert(1, "Metadata_Well", cells["well"].to_numpy())
    df.insert(2, "Metadata_broad_sample", pm.loc[cells["well"], "broad_sample"].to_numpy())
    return df


@pytest.fixture(scope="session")
def tiny_plates(tmp_path_factory):
    """Three normalized plates (P1, P2 for training, P3 held out) and the feature list."""
    root = tmp_path_factory.mktemp("tiny")
    paths = {}
    for plate in ("P1", "P2", "P3"):
        df = normalized_plate(TINY, plate)
        paths[plate] = str(root / f"{plate}.parquet")
        write_profiles(df, paths[plate])
    features = [c for c in df.columns if not c.startswith("Metadata_")]
    return paths, features



@pytest.fixture(scope="session")
def tiny_reference_run(tmp_path_factory):
    """The tiny config (tests/tiny_config.yaml) run to the end locally with --cores 2, in a copy of the
    workflow: the reference that the Slurm run (test_slurm.py) and the crash recoveries (test_faults.py)
    must reproduce table for table, and the run test_workflow.py inspects. Do not modify it (test_workflow.py
    adds report.html, which the copies of it leave out)."""
    from helpers import copy_workflow, snakemake

    wd = copy_workflow(tmp_path_factory.mktemp("reference"))
    snakemake(wd, "--cores", "2")
    return wd
