"""The hyper-parameter search (config search.grid): trials, their table, and the preset on a tiny grid."""

import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from cytoagg.evaluate.search import SearchSettings, grid_trials, search_table
from cytoagg.io.files import InputError


def test_grid_trials_are_every_combination_in_order():
    trials = grid_trials({"temperature": [0.1, 0.2], "part_lr": [0.01, None, 0.1]})
    assert list(trials) == ["t000", "t001", "t002", "t003", "t004", "t005"]
    assert trials["t000"] == {"temperature": 0.1, "part_lr": 0.01}
    assert trials["t004"] == {"temperature": 0.2, "part_lr": None}
    assert grid_trials({}) == {}


def _log(path, val):
    """A training log with val_mAP (and train_mAP) at the given epochs ({epoch: val_mAP})."""
    rows = [{"epoch": e, "loss": 1.0, "train_mAP": 0.9, "val_mAP": v} for e, v in val.items()]
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def test_search_table_ranks_trials_by_their_best_validation_compound_map(tmp_path):
    logs = {
        "t000": _log(tmp_path / "a.csv", {4: 0.30, 9: 0.50}),
        "t001": _log(tmp_path / "b.csv", {4: 0.62, 9: 0.55}),
    }
    trials = {"t000": {"temperature": 0.1}, "t001": {"temperature": 0.2}}
    table = search_table(logs, tmp_path / "s.csv", tmp_path / "s.md", SearchSettings(trials=trials))
    assert table.trial.tolist() == ["t001", "t000"] and table["rank"].tolist() == [1, 2]
    assert table.set_index("trial").loc["t001", "best_epoch"] == 4
    assert table.set_index("trial").loc["t000", "score_val_mAP_training_plates"] == pytest.approx(0.50)
    md = (tmp_path / "s.md").read_text()
    assert "Best: t001 (temperature = 0.2), score 0.620" in md
    with pytest.raises(InputError, match="missing for trials"):
        search_table({"t000": logs["t000"]}, tmp_path / "x.csv", tmp_path / "x.md", SearchSettings(trials=trials))
    pd.DataFrame({"epoch": [0], "loss": [1.0]}).to_csv(tmp_path / "none.csv", index=False)
    with pytest.raises(InputError, match="no validation-compound mAP"):
        search_table({"t000": str(tmp_path / "none.csv")}, tmp_path / "y.csv", tmp_path / "y.md",
                     SearchSettings(trials={"t000": {"temperature": 0.1}}))


def _snakemake(wd, *args):
    cmd = [sys.executable, "-m", "snakemake", *args, "--configfile", "tiny.yaml", "search.yaml"]
    return subprocess.run(cmd, cwd=wd, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("grid, message", [
    ({"threads": [1, 2]}, "not training settings a search can vary"),
    ({"temperature": [0.1, -1]}, "temperature"),
    ({"head": ["parts"]}, "trial t000"),  # the paper's network (tiny.yaml) with the parts head: no plate_norm
])
def test_bad_grids_stop_before_any_job(tmp_path, grid, message):
    from helpers import copy_workflow

    wd = copy_workflow(tmp_path)
    (wd / "search.yaml").write_text(yaml.safe_dump({"search": {"grid": grid}}))
    proc = _snakemake(wd, "-n")
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-2000:]


def test_search_preset_runs_a_tiny_grid_on_the_reference_run(tmp_path, tiny_reference_run):
    """Two trials from the reference run's cell stores: only the search's own jobs run, one table comes out."""
    wd = tmp_path / "wd"
    shutil.copytree(tiny_reference_run, wd, symlinks=True)
    (wd / "search.yaml").write_text(yaml.safe_dump({"search": {"grid": {"temperature": [0.1, 0.3]}}}))
    proc = _snakemake(wd, "--cores", "2", "results/tables/search.csv")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    ran = {line.split()[0] for line in out.split("Job stats:")[1].split("\n\n")[0].splitlines()[3:] if line.strip()}
    assert ran == {"search_train", "search_table", "total"}, ran
    table = pd.read_csv(wd / "results/tables/search.csv")
    assert sorted(table.temperature) == [0.1, 0.3] and table.score_val_mAP_training_plates.between(0, 1).all()
    assert table.score_val_mAP_training_plates.is_monotonic_decreasing
    settings = yaml.safe_load((wd / "tiny.yaml").read_text())["train"]
    assert (table.epochs_run == settings["epochs"]).all()
