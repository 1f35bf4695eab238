"""Progress on the console (cytoagg.progress): warnings, progress bars and heartbeats as short tagged lines, the
full log still in the log file."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from cytoagg.io.parquet import write_profiles
from cytoagg.progress import (
    CONSOLE_FD_ENV,
    PROGRESS_LOGGER,
    BarRelay,
    ConsoleHandler,
    Heartbeat,
    bar_line,
)


def training_like_bar(file, epochs=6, mininterval=0.0):
    """A bar as cytoagg.model.train draws it: loss every epoch, the validation mAP every 3rd (NaN between)."""
    bar = tqdm(range(epochs), desc="train", mininterval=mininterval, total=epochs, file=file)
    for epoch in bar:
        val = 0.5 + epoch / 100 if (epoch + 1) % 3 == 0 else float("nan")
        bar.set_postfix(loss=f"{2 - epoch / 10:.3f}", val_mAP=f"{val:.3f}", refresh=False)
    bar.close()


def test_bar_line_reads_tqdm_refreshes():
    out = io.StringIO()
    training_like_bar(out)
    lines = [bar_line(part) for part in out.getvalue().replace("\n", "\r").split("\r") if part.strip()]
    assert all(lines) and lines[0] == "train 0/6 (00:00 elapsed)"
    assert any(line.startswith("train 3/6 ") and line.endswith("loss=1.800, val_mAP=0.520") for line in lines)
    assert any(line.startswith("train 4/6 ") and line.endswith("loss=1.700") for line in lines)  # no "val_mAP=nan"
    assert lines[-1].startswith("train 6/6 ")
    assert bar_line("2026-01-01 INFO cytoagg: trained: {'best_epoch': 5}") is None


def test_relay_logs_everything_and_shows_few_short_lines():
    log, console = io.StringIO(), io.StringIO()
    ticks = iter(range(0, 1000, 3))  # 3 s between refreshes, a line at most every 10 s: the first, every 4th, the last
    relay = BarRelay(log, console, "train", interval=10.0, clock=lambda: next(ticks))
    training_like_bar(relay, epochs=12)
    shown = console.getvalue().splitlines()
    assert log.getvalue().count("\r") >= 12 and "val_mAP=nan" in log.getvalue()  # the log file keeps every refresh
    assert shown[0].startswith("[train] train 0/12 ") and shown[-1].startswith("[train] train 12/12 ")
    assert 3 <= len(shown) <= 6, shown
    assert all(len(line) < 120 and "|" not in line for line in shown)


def test_console_handler_shows_warnings_and_progress_records_only():
    console = io.StringIO()
    logger = logging.getLogger("cytoagg.test_progress")
    handler = ConsoleHandler(console, "ingest P1")
    logging.getLogger("cytoagg").addHandler(handler)  # as the CLI does; cytoagg.progress is below it
    try:
        for name in (logger.name, PROGRESS_LOGGER):
            logging.getLogger(name).setLevel(logging.INFO)
        logger.info("a detail for the log file")
        logger.warning("dropped 3 cells\nin well A01 " + "x" * 400)
        logger.error("an error: Snakemake shows the failed log")
        logging.getLogger(PROGRESS_LOGGER).info("epoch 3")
    finally:
        logging.getLogger("cytoagg").removeHandler(handler)
    lines = console.getvalue().splitlines()
    assert lines[0].startswith("[ingest P1] dropped 3 cells in well A01 xxx") and lines[0].endswith("...")
    assert len(lines[0]) <= len("[ingest P1] ") + 240
    assert lines[1:] == ["[ingest P1] epoch 3"]


def test_heartbeat_reports_what_the_step_has_written(tmp_path):
    source = tmp_path / "plate.sqlite"
    source.write_bytes(b"x" * 3_000_000)
    out = tmp_path / "ingested" / "P1.parquet"
    out.parent.mkdir()
    (out.parent / ".P1.parquet.abc123.tmp").write_bytes(b"y" * 1_500_000)  # what atomic_path writes meanwhile
    console = io.StringIO()
    with Heartbeat(console, "ingest P1", source, out, interval=0.05):
        time.sleep(0.3)
    lines = console.getvalue().splitlines()
    assert lines and lines[0].startswith("[ingest P1] running for 0 s: 0.00 GB written so far (the source is 0.00 GB)")
    quiet = io.StringIO()
    with Heartbeat(quiet, "ingest P1", source, out, interval=60):
        pass
    assert quiet.getvalue() == ""  # a short step says nothing


def test_a_step_under_the_workflow_writes_its_warning_to_the_console_and_everything_to_its_log(tmp_path):
    """The rules' shell prefix keeps the console as fd 3 (CYTOAGG_CONSOLE_FD); a step's stderr is its log."""
    for plate, features in (("P1", ["Cells_A", "Cells_B"]), ("P2", ["Cells_A"])):
        write_profiles(pd.DataFrame({"Metadata_Plate": [plate], **{f: [1.0] for f in features}}),
                       tmp_path / f"{plate}.parquet")
    read, write = os.pipe()
    log = tmp_path / "step.log"
    with open(log, "w") as err:
        proc = subprocess.run(
            [sys.executable, "-m", "cytoagg", "common-features", "--plates", str(tmp_path / "P1.parquet"),
             str(tmp_path / "P2.parquet"), "--out", str(tmp_path / "c.txt"), "--out-dropped", str(tmp_path / "d.csv")],
            stderr=err, pass_fds=(write,), env={**os.environ, CONSOLE_FD_ENV: str(write)},
        )
    os.close(write)
    with os.fdopen(read) as fh:
        console = fh.read()
    assert proc.returncode == 0
    assert console.startswith("[common-features] features common to all 2 plates: 1 (plates have 1 to 2)")
    assert console.count("\n") == 1
    text = Path(log).read_text()
    assert "P1: 1 of its 2 features are not on every plate, left out: Cells_B" in text and "features common" in text
