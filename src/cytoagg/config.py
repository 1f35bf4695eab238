"""Checks of a cytoagg config that a JSON schema cannot express; run when the Snakefile is parsed,
so a bad config fails before any job with a message naming the key."""

from __future__ import annotations

import os
import re
from collections import Counter

from .io.columns import close_matches
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


def _check_second_order(config: dict) -> None:
    """The second-order model's options that only work together (see the schema's train: keys)."""
    tr, negcon = config["train"], config["metadata"]["negcon_value"]
    if tr["plate_norm"] != "none":
        if negcon is None:
            raise ConfigError("config key train.plate_norm needs metadata.negcon_value (the negative-control wells it "
                              "normalizes against)")
        if tr["pooling"] == "sum":
            raise ConfigError("config key train.plate_norm needs train.pooling 'mean' or 'meancov' (a sum grows with "
                              "the number of cells)")
        if config["plates"]["without_negcon"]:
            raise ConfigError(f"config key train.plate_norm: plates {config['plates']['without_negcon']} have no "
                              "negative-control wells (plates.without_negcon) to normalize their profiles against")
    if tr["head"] == "parts" and tr["plate_norm"] == "none":
        raise ConfigError("config key train.head 'parts' needs train.plate_norm 'negcon_mad'")
    if tr["init"] == "pca_negcon" and negcon is None:
        raise ConfigError("config key train.init 'pca_negcon' needs metadata.negcon_value")
    if tr["cell_hidden"] == "auto" and tr["init"] != "pca_negcon":
        raise ConfigError("config key train.cell_hidden 'auto' needs train.init 'pca_negcon'")


SEARCH_EXCLUDED = ("checkpoint", "threads", "embedding", "device")  # not training settings a search can vary


def search_configs(config: dict) -> dict[str, dict]:
    """Each trial of config ``search.grid`` (see :func:`cytoagg.evaluate.search.grid_trials`): its config, the
    config with the trial's ``train:`` values."""
    from .evaluate.search import grid_trials

    return {t: {**config, "train": {**config["train"], **values}} for t, values in grid_trials(config["search"]["grid"]).items()}


def _check_search(config: dict) -> None:
    grid = config["search"]["grid"]
    if not grid:
        return
    unknown = sorted(set(grid) - set(config["train"]) | set(grid) & set(SEARCH_EXCLUDED))
    if unknown:
        raise ConfigError(f"config key search.grid: {unknown} are not training settings a search can vary "
                          f"(train: keys other than {list(SEARCH_EXCLUDED)})")
    validation = config["compounds"]["validation"]
    if not validation:
        raise ConfigError("config key search.grid: a search is scored on the validation compounds of the training plates, "
                          "but compounds.validation holds none out")
    for trial, trial_config in search_configs(config).items():
        try:
            _check_set_sizes(trial_config["train"])
            _check_second_order(trial_config)
        except ConfigError as e:
            raise ConfigError(f"config key search.grid, trial {trial} ({ {k: trial_config['train'][k] for k in grid} }): {e}") from None


def check_config(config: dict) -> None:
    _check_results(config["results"])
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
    unknown = sorted(set(config["plates"]["without_negcon"]) - set(train) - set(validation))
    if unknown:
        raise ConfigError(f"config key plates.without_negcon: {unknown} are neither training nor validation plates")
    pattern = config["dataset"]["path"]
    if pattern is not None:
        for key, plates in (("plates.train", train), ("plates.validation", validation)):
            for plate in plates:
                path = plate_path(pattern, plate)
                if not os.path.exists(path):
                    raise ConfigError(f"config key {key}: plate {plate!r} not found: {path} does not exist (dataset.path)")
    checkpoint = config["train"]["checkpoint"]
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise ConfigError(f"config key train.checkpoint: {checkpoint} does not exist")
    for key in ("barcode_platemap", "platemap_dir", "platemap"):
        value = config["dataset"].get(key)
        if value is not None and not os.path.exists(value):
            raise ConfigError(f"config key dataset.{key}: {value} does not exist")
    if (config["dataset"].get("barcode_platemap") is None) != (config["dataset"].get("platemap_dir") is None):
        raise ConfigError("config keys dataset.barcode_platemap and dataset.platemap_dir go together: set both or neither")
    _check_metadata_keys(config["metadata"])
    _check_pipelines(config)
    _check_set_sizes(config["train"])
    _check_second_order(config)
    _check_search(config)
    if isinstance(config["compounds"]["validation"], (int, float)) and config["compounds"]["validation"] >= 1:
        raise ConfigError("config key compounds.validation: 1 holds every compound out of training; use a fraction "
                          "below 1 or a list of compound names")


def plate_path(pattern: str, plate: str) -> str:
    """``dataset.path`` filled for one plate; a placeholder other than ``{plate}`` is a ConfigError naming it."""
    if "{plate}" not in pattern:
        raise ConfigError(f"config key dataset.path must contain '{{plate}}', got {pattern!r}")
    try:
        return pattern.format(plate=plate)
    except (KeyError, IndexError) as e:
        raise ConfigError(
            f"config key dataset.path: unknown placeholder {{{e.args[0]}}} in {pattern!r}; only {{plate}} is filled "
            "(write other braces as {{ and }})"
        ) from None
    except ValueError as e:
        raise ConfigError(f"config key dataset.path: {pattern!r} is not a valid pattern ({e})") from None


def _check_results(results: str) -> None:
    path = os.path.abspath(os.path.expanduser(str(results)))
    if not str(results).strip() or os.path.dirname(path) == path:
        raise ConfigError(f"config key results: {results!r} would write into the file system root; name a folder")


def _check_metadata_keys(md: dict) -> None:
    """Two roles in one column would make every query its own positive, or lose a column: refused."""
    roles = {"metadata.plate": md["plate"], "metadata.well": md["well"], "metadata.perturbation": md["perturbation"]}
    seen: dict[str, str] = {}
    for key, column in roles.items():
        if column in seen:
            raise ConfigError(f"config keys {seen[column]} and {key} both name column {column!r}: each needs its own column")
        seen[column] = key
    if md["negcon_column"] in (md["plate"], md["well"]):
        raise ConfigError(f"config key metadata.negcon_column: {md['negcon_column']!r} is the plate or well column")
    for key in ("plate", "well"):
        if not md[key].startswith("Metadata_"):
            raise ConfigError(f"config key metadata.{key}: {md[key]!r} must start with Metadata_")


def _check_pipelines(config: dict) -> None:
    pipelines = config["evaluate"]["pipelines"]
    needs = [p for p in pipelines if p != "raw"]
    if needs and config["metadata"]["negcon_value"] is None and not config.get("experiment"):
        raise ConfigError(f"config key evaluate.pipelines: {needs} normalize against negative controls, but "
                          "metadata.negcon_value is null (no controls); use [raw]")
    if "harmony" in pipelines and config["evaluate"]["reference"] != "split":
        raise ConfigError("config key evaluate.pipelines: harmony corrects plates against each other, which matters only "
                          "for evaluate.reference: split (ranking against every plate of a split)")


def _check_set_sizes(train: dict) -> None:
    from .model.sampler import MIN_ACCEPTANCE, set_size_acceptance

    p = set_size_acceptance(train["cells_mean"], train["cells_std"], train["cells_min"])
    if p < MIN_ACCEPTANCE:
        raise ConfigError(
            f"config keys train.cells_mean ({train['cells_mean']:g}), cells_std ({train['cells_std']:g}) and cells_min "
            f"({train['cells_min']}): sets are drawn from round(N(cells_mean, cells_std)) until the size is even and "
            f">= cells_min, which happens in {p:.2g} of the draws; training would hang. Raise cells_mean or cells_std, "
            "or lower cells_min"
        )


def check_metadata_columns(config: dict, columns: list[str], where: str) -> None:
    """The metadata settings against the columns a plate will have after ingest (its own metadata and its
    platemap's annotations): an error naming the key and the close matches, not a list of every column."""
    md = config["metadata"]
    wanted = {"metadata.well": md["well"], "metadata.perturbation": md["perturbation"]}
    if md["negcon_value"] is not None and md["negcon_column"]:
        wanted["metadata.negcon_column"] = md["negcon_column"]
    present = set(columns) | {md["plate"]}
    for key, column in wanted.items():
        if column not in present:
            hint = close_matches(column, columns)
            raise ConfigError(
                f"config key {key}: column {column!r} is not in {where}"
                + (f"; did you mean {', '.join(map(repr, hint))}?" if hint else f" (it has {len(columns)} metadata columns)")
            )


def check_first_plate_columns(config: dict, platemaps: dict) -> None:
    """The metadata settings against the first plate's columns, where they can be read cheaply (the source's
    header or schema, and its platemap's columns). A plate that cannot be read is left to ingest to report."""
    from .ingest.plate import source_metadata_columns
    from .io.platemap import read_platemap

    plates = [*config["plates"]["train"], *config["plates"]["validation"]]
    if not plates:
        return
    plate = plates[0]
    if config["dataset"]["path"] is None:
        from .synthetic.screen import METADATA_COLUMNS

        check_metadata_columns(config, list(METADATA_COLUMNS), "the built-in synthetic plates")
        return
    path = plate_path(config["dataset"]["path"], plate)
    try:
        columns = source_metadata_columns(path, config["dataset"]["format"], config["dataset"]["compartments"],
                                          config["metadata"]["well"], config["dataset"]["hub"], config["dataset"]["links"])
        if platemaps.get(plate):
            columns += list(read_platemap(platemaps[plate]).columns)
    except (InputError, OSError, ValueError):
        return
    check_metadata_columns(config, columns, f"plate {plate} ({path})" + (" or its platemap" if platemaps.get(plate) else ""))


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
