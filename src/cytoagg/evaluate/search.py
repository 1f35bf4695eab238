"""The hyper-parameter search's table (config ``search.grid``): each trial's training settings beside its score.

Every trial is one training job (its ``train:`` settings with the trial's values); its score is the one training
selects its checkpoint by: the validation-compound mAP on the **training plates** (``val_mAP`` of its training log).
The validation plates are never looked at, so choosing the best row is not selecting on them.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..io.files import InputError, write_table, write_text
from ..settings import Settings

logger = logging.getLogger(__name__)


def grid_trials(grid: dict[str, list]) -> dict[str, dict]:
    """Every combination of the grid's values, named ``t000``, ``t001``, ... in the grid's order (the last key
    varies fastest); an empty grid has no trial."""
    if not grid:
        return {}
    keys = list(grid)
    combos = list(itertools.product(*(grid[k] for k in keys)))
    width = max(3, len(str(len(combos) - 1)))
    return {f"t{i:0{width}d}": dict(zip(keys, values)) for i, values in enumerate(combos)}


@dataclass(frozen=True)
class SearchSettings(Settings):
    """The trials of config ``search.grid`` (trial name -> its ``train:`` values), as :func:`grid_trials` names them."""

    trials: dict


def search_table(logs: dict[str, str], out_csv, out_md, settings: SearchSettings) -> pd.DataFrame:
    """Write (and return) one row per trial: its settings, its score (best ``val_mAP``: validation compounds x
    training plates), the epoch of that score, the training-compound mAP there, epochs run; best score first."""
    missing = sorted(set(settings.trials) - set(logs))
    extra = sorted(set(logs) - set(settings.trials))
    if missing or extra:
        raise InputError(f"search table: training logs missing for trials {missing}, or given for unknown trials {extra}")
    rows = []
    for trial, values in settings.trials.items():
        log = pd.read_csv(logs[trial])
        if "val_mAP" not in log.columns or log["val_mAP"].isna().all():
            raise InputError(
                f"{logs[trial]}: no validation-compound mAP to score trial {trial} by (the search needs validation "
                "compounds on the training plates: compounds.validation)"
            )
        best = log.loc[log["val_mAP"].idxmax()]
        rows.append({
            "trial": trial,
            **{k: _cell(v) for k, v in values.items()},
            "score_val_mAP_training_plates": float(best["val_mAP"]),
            "best_epoch": int(best["epoch"]),
            "train_mAP_at_best": float(best["train_mAP"]) if "train_mAP" in log.columns else np.nan,
            "epochs_run": len(log),
        })
    table = pd.DataFrame(rows).sort_values("score_val_mAP_training_plates", ascending=False, kind="stable")
    table.insert(1, "rank", np.arange(1, len(table) + 1))
    write_table(table, out_csv)
    best = table.iloc[0]
    settings_text = ", ".join(f"{k} = {best[k]}" for k in settings.trials[best["trial"]])
    text = (
        "# Hyper-parameter search\n\n"
        f"{len(table)} trials (config `search.grid`), each trained as its own job. Score: the checkpoint's mAP on the "
        "validation compounds of the training plates (what training selects its checkpoint by); the validation plates "
        "are not used.\n\n"
        f"Best: {best['trial']} ({settings_text}), score {best['score_val_mAP_training_plates']:.3f}.\n\n"
        + table.to_markdown(index=False, floatfmt=".3f")
        + "\n"
    )
    write_text(text, out_md)
    logger.info("search: %d trials, best %s (%.3f)", len(table), best["trial"], best["score_val_mAP_training_plates"])
    return table


def _cell(value):
    """A setting's value as a table cell (None as the config's null)."""
    return "null" if value is None else value
