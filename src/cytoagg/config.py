"""Checks of a cytoagg config that a JSON schema cannot express; run when the Snakefile is parsed,
so a bad config fails before any job with a message naming the key."""

from __future__ import annotations

import os
import re
from collections import Counter

from .io.files import InputError
from .io.platemap import platemap_file


class ConfigError(ValueError):
    pass


# A plate name becomes part of file names and shell commands: letters, digits, '_' and '-', with single
# dots between them. No '/', spaces, '..', leading dot or shell metacharacters. The same regex is the
# {plate} wildcard constraint (workflow/rules/common.smk) and the schema's pattern for plate names.
PLATE_NAME = r"[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*"


def check_plate_name(name: str, key: str) -> None:
    if not isinstance(name, str) or not re.fullmatch(PLATE_NAME, name):
        raise ConfigError(
            f"config key {key}: plate name {name!r} is not allowed: use letters, digits, '_', '-' and single "
            "dots between them (no '/', spaces, '..' or shell metacharacters)"
        )


def check_config(config: dict) -> None:
    train, validation = config["plates"]["train"], config["plates"]["validation"]
    for key, plates in (("plates.train", train), ("plates.validation", validation)):
        for plate in plates:
            check_plate_name(plate, key)
        dup = [p for p, n in Counter(plates).items() if n > 1]
        if dup:
            raise ConfigError(f"config key {key}: plate(s) listed twice: {dup}")
    both = sorted(set(train) & set(validation))
    if both:
        raise ConfigError(f"config keys plates.train and plates.validation share plate(s) {both}")
    pattern = config["dataset"]["path"]
    if pattern is not None:
        if "{plate}" not in pattern:
            raise ConfigError(f"config key dataset.path must contain '{{plate}}', got {pattern!r}")
        for key, plates in (("plates.train", train), ("plates.validation", validation)):
            for plate in plates:
                path = pattern.format(plate=plate)
                if not os.path.exists(path):
                    raise ConfigError(f"config key {key}: plate {plate!r} not found: {path} does not exist (dataset.path)")
    filtered = config["evaluate"]["filtered_mean"]
    if "filtered_mean" in config["evaluate"]["baselines"] and not filtered["lower_quantile"] < filtered["upper_quantile"]:
        raise ConfigError(
            f"config keys evaluate.filtered_mean.lower_quantile ({filtered['lower_quantile']}) and upper_quantile "
            f"({filtered['upper_quantile']}): the lower quantile must be below the upper one"
        )
    checkpoint = config["train"]["checkpoint"]
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise ConfigError(f"config key train.checkpoint: {checkpoint} does not exist")
    for key in ("barcode_platemap", "platemap_dir", "platemap"):
        value = config["dataset"].get(key)
        if value is not None and not os.path.exists(value):
            raise ConfigError(f"config key dataset.{key}: {value} does not exist")
    if (config["dataset"].get("barcode_platemap") is None) != (config["dataset"].get("platemap_dir") is None):
        raise ConfigError("config keys dataset.barcode_platemap and dataset.platemap_dir go together: set both or neither")


def resolve_platemaps(dataset: dict, plates: list[str]) -> dict[str, str | None]:
    """Each plate's own platemap file.

    Rules take that one file as input (not barcode_platemap.csv), so adding a plate's row to
    barcode_platemap.csv does not rerun the other plates.
    """
    keys = {k: dataset.get(k) for k in ("barcode_platemap", "platemap_dir", "platemap")}
    try:
        files = {p: platemap_file(p, **keys) for p in plates}
    except InputError as e:
        raise ConfigError(f"config key dataset.barcode_platemap: {e}") from e
    return {p: None if f is None else str(f) for p, f in files.items()}
