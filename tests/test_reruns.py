"""Rerun triggers not covered by test_workflow.py: report captions (nothing to rerun) and a new package
version (every result with the version in its params is outdated, ``--list-changes params``).

Each test works on a copy of the finished reference run (copied with mtimes, so nothing is outdated)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from helpers import planned_jobs, snakemake

pytestmark = pytest.mark.slow


@pytest.fixture
def finished_copy(tmp_path, tiny_reference_run) -> Path:
    wd = tmp_path / "wf"
    shutil.copytree(tiny_reference_run, wd, symlinks=True, ignore=shutil.ignore_patterns("report.html", "locks"))
    assert planned_jobs(wd) == {}
    return wd


def summary_status(wd: Path) -> dict[str, str]:
    """``snakemake --summary``: output file -> status ("ok", "params changed", ...).

    (Snakemake 9.27's ``--list-changes params`` lists every output that has params, changed or not: its
    ParamsChange keeps the file names of unchanged outputs. ``--summary`` and the dry run are right.)"""
    out = snakemake(wd, "--summary").stdout
    status = {}
    for line in out.splitlines():
        fields = line.split("\t")
        if len(fields) >= 5 and fields[0].startswith("results/"):
            status[fields[0]] = fields[4]
    return status


def test_changing_a_report_caption_reruns_nothing(finished_copy):
    for caption in (finished_copy / "workflow/report").glob("*.rst"):
        caption.write_text(caption.read_text() + "\nEdited caption.\n")
    assert planned_jobs(finished_copy) == {}
    assert set(summary_status(finished_copy).values()) == {"ok"}


def test_a_new_package_version_marks_results_outdated(finished_copy):
    assert set(summary_status(finished_copy).values()) == {"ok"}
    init = finished_copy / "src/cytoagg/__init__.py"
    text, n = re.subn(r'__version__ = "[^"]+"', '__version__ = "999.0.0"', init.read_text())
    assert n == 1
    init.write_text(text)

    status = summary_status(finished_copy)
    for plate in ("P1", "P2", "P3"):
        assert status[f"results/normalized/{plate}.parquet"] == "params changed"
        assert status[f"results/ap/raw/model/{plate}.parquet"] == "params changed"
    assert status["results/model/model.pt"] == "params changed"
    assert status["results/tables/map_per_plate.csv"] == "params changed"
    jobs = planned_jobs(finished_copy)
    assert jobs["ingest"] == 3 and jobs["normalize"] == 3 and jobs["train"] == 1 and jobs["summarize"] == 1


def test_changing_an_ingest_setting_reruns_ingest(finished_copy):
    status = summary_status(finished_copy)
    assert status["results/ingested/P1.parquet"] == "ok"
    jobs = planned_jobs(finished_copy, "--config", "dataset={'compartments': ['Cells', 'Nuclei']}")
    assert jobs.get("ingest") == 3
