"""Which config a run used: a --configfile starts from the schema's defaults (the demo config.yaml only without one);
where each value came from; a dataset of one's own must name its plates."""

from __future__ import annotations

import copy

import pytest
import yaml
from snakemake.utils import validate

from cytoagg.config import ConfigError, check_config
from cytoagg.config_sources import COMMAND_LINE, DEFAULT, config_sources, config_used_text, describe_sources
from helpers import REPO, SCHEMA


def resolved(*layers: dict) -> dict:
    """The layers merged as Snakemake merges config files and --config, then the schema's defaults filled in."""
    from snakemake.utils import update_config

    config: dict = {}
    for layer in layers:
        update_config(config, copy.deepcopy(layer))
    validate(config, str(SCHEMA))
    return config


def test_each_value_names_its_source():
    mine = {"dataset": {"path": "data/{plate}.parquet"}, "plates": {"train": ["A"], "validation": []},
            "train": {"epochs": 5, "lr": 0.001}}
    extra = {"train": {"epochs": 2}}
    cli = {"normalize": {"method": "none"}}
    config = resolved(mine, extra, cli)
    sources = config_sources(config, [("mine.yaml", mine), ("extra.yaml", extra), (COMMAND_LINE, cli)])
    assert sources["train.epochs"] == "extra.yaml" and sources["train.lr"] == "mine.yaml"
    assert sources["normalize.method"] == COMMAND_LINE and sources["normalize.samples"] == DEFAULT
    assert sources["plates.validation"] == "mine.yaml" and sources["train.cells_mean"] == DEFAULT
    text = config_used_text(config, sources, ["mine.yaml", "extra.yaml"])
    assert "  epochs: 2  # extra.yaml\n" in text and '  method: "none"  # --config\n' in text
    assert yaml.safe_load(text)["train"] == config["train"]  # the file reads back as the config it describes
    line = describe_sources(["mine.yaml", "extra.yaml"], False, sources, "results/config_used.yaml")
    assert line.startswith("cytoagg config: mine.yaml, extra.yaml (the demo config.yaml is not read when --configfile")
    assert "--config sets normalize.method" in line and "results/config_used.yaml" in line
    n_default = sum(s == DEFAULT for s in sources.values())
    assert f"{n_default} of {len(sources)} settings are the schema's defaults" in line


def test_the_demo_config_says_it_is_the_demo():
    demo = yaml.safe_load((REPO / "config.yaml").read_text())
    config = resolved(demo)
    sources = config_sources(config, [("config.yaml", demo)])
    assert sources["train.epochs"] == "config.yaml" and sources["train.patience"] == DEFAULT
    line = describe_sources(["config.yaml"], True, sources, "results/config_used.yaml")
    assert "config.yaml (the demo config: read because no --configfile was given)" in line


@pytest.mark.parametrize("missing", ["train", "validation"])
def test_own_dataset_without_its_plates_is_refused(tmp_path, missing):
    """A user's config that leaves out a plate list would get the synthetic screen's P1-P6: refused, named."""
    (tmp_path / "A.parquet").touch()
    plates = {"train": ["A"], "validation": []}
    del plates[missing]
    mine = {"dataset": {"path": str(tmp_path / "{plate}.parquet")}, "plates": plates}
    config = resolved(mine)
    defaulted = {k for k, s in config_sources(config, [("mine.yaml", mine)]).items() if s == DEFAULT}
    with pytest.raises(ConfigError, match=rf"config key plates.{missing} is not set, so it is the built-in synthetic "
                                          r"screen's \[.*\], but dataset.path names your plates.*cytoagg init"):
        check_config(config, defaulted)
    check_config(resolved(mine, {"plates": {missing: ["A"] if missing == "train" else []}}), set())
