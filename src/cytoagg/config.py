"""Checks of a cytoagg config that a JSON schema cannot express; run when the Snakefile is parsed,
so a bad config fails before any job with a message naming the key."""

from __future__ import annotations

import importlib.util
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable

from .io.columns import close_matches
from .io.files import InputError
from .io.platemap import PLATEMAP_SUFFIXES, platemap_file, platemap_name


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


# Data in object storage: dataset keys whose value starts with s3:// are read through Snakemake's storage
# plugin for S3 (snakemake-storage-plugin-s3), each plate fetched by the job that reads it. check_config
# makes no request (the URLs' form, the plugin installed); check_plates_in_s3 then finds every plate's object
# in one listing of the path's folder, so a missing plate stops the run as a missing local file does.
S3_PREFIX = "s3://"
S3_PLUGIN = "snakemake_storage_plugin_s3"
DATASET_FILES = ("path", "barcode_platemap", "platemap_dir", "platemap")


def on_s3(value) -> bool:
    return isinstance(value, str) and value.startswith(S3_PREFIX)


def s3_keys(dataset: dict) -> list[str]:
    """The dataset keys (``dataset.<key>``) that name S3 locations."""
    return [k for k in DATASET_FILES if on_s3(dataset.get(k))]


def check_s3_url(key: str, url: str) -> None:
    """``s3://<bucket>/<key>``, the bucket named outright (it cannot hold a wildcard)."""
    bucket, _, name = url[len(S3_PREFIX):].partition("/")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket) or not name.strip("/"):
        raise ConfigError(
            f"config key {key}: {url!r} is not s3://<bucket>/<path> (a bucket name of lower-case letters, digits, "
            "'.' and '-', without braces, then a path inside it)"
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
    model = (tr["pooling"], tr["cell_activation"], tr["plate_norm"])
    if config["saliency"]["enabled"] and (model[0] == "meancov" or model[1:] != ("leaky_relu", "none")):
        raise ConfigError(
            "config key saliency.enabled: the saliencies (V0, V1) are defined for the paper's per-cell layer "
            "(train.cell_activation leaky_relu) with sum or mean pooling and no plate normalization, not for "
            f"train.pooling {model[0]!r}, cell_activation {model[1]!r}, plate_norm {model[2]!r}: "
            "set saliency.enabled: false"
        )


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


def check_config(config: dict, defaulted: frozenset[str] | set[str] = frozenset()) -> None:
    """``defaulted``: the dotted keys that took the schema's default (none given in a config file or --config)."""
    _check_results(config["results"])
    train, validation = config["plates"]["train"], config["plates"]["validation"]
    if config["dataset"]["path"] is not None and not config.get("experiment"):
        for key, plates in (("plates.train", train), ("plates.validation", validation)):
            if key in defaulted:
                raise ConfigError(
                    f"config key {key} is not set, so it is the built-in synthetic screen's {plates}, but dataset.path "
                    f"names your plates: list them in {key}" + (" ([] for none)" if key == "plates.validation" else "")
                    + "; `cytoagg init <data path pattern>` writes both lists"
                )
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
    remote = s3_keys(config["dataset"])
    for key in remote:
        check_s3_url(f"dataset.{key}", config["dataset"][key])
    if remote and importlib.util.find_spec(S3_PLUGIN) is None:
        raise ConfigError(
            f"config key dataset.{remote[0]} is an S3 location: install Snakemake's storage plugin for S3 "
            "(pip install 'cytoagg[s3]', or snakemake-storage-plugin-s3)"
        )
    if pattern is not None:
        for key, plates in (("plates.train", train), ("plates.validation", validation)):
            for plate in plates:
                path = plate_path(pattern, plate)
                # on S3: check_plates_in_s3, once the Snakefile has set up the storage plugin
                if not on_s3(pattern) and not os.path.exists(path):
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
        if value is not None and not on_s3(value) and not os.path.exists(value):
            raise ConfigError(f"config key dataset.{key}: {value} does not exist")
    features_file = config["dataset"]["features_file"]
    if features_file is not None:
        if config["dataset"]["features"] is not None:
            raise ConfigError("config keys dataset.features and dataset.features_file: set one of them (the file names "
                              "the features to ingest; features: common keeps those every plate has)")
        if not os.path.isfile(features_file):
            raise ConfigError(f"config key dataset.features_file: {features_file} does not exist")
    if (config["dataset"].get("barcode_platemap") is None) != (config["dataset"].get("platemap_dir") is None):
        raise ConfigError("config keys dataset.barcode_platemap and dataset.platemap_dir go together: set both or neither")
    _check_metadata_keys(config["metadata"])
    _check_pipelines(config)
    _check_set_sizes(config["train"])
    _check_normalize(config["normalize"])
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


def _check_normalize(normalize: dict) -> None:
    from .preprocess.normalize import NONE, check_none

    if normalize["method"] == NONE:
        try:
            check_none(normalize["samples"], normalize["epsilon"])
        except InputError as e:
            raise ConfigError(f"config key {e}") from None


def _check_set_sizes(train: dict) -> None:
    from .model.set_sizes import MIN_ACCEPTANCE, set_size_acceptance

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


LISTED_KEYS_PER_PLATE = 20  # how far the listing of check_plates_in_s3 goes before it asks plate by plate


def check_plates_in_s3(
    config: dict,
    list_objects: Callable[[str], Iterable[tuple[str, int]]],
    exists: Callable[[str], bool],
) -> dict[str, int]:
    """Every plate's object in S3 (dataset.path), and dataset.platemap when it is in S3 too.

    One listing of the path's constant prefix (``s3://bucket/.../backend/<batch>/`` for a Gallery path: a page
    per 1,000 objects) finds the plates; it stops after ``LISTED_KEYS_PER_PLATE`` objects per plate (a folder
    of much else), and the plates not seen by then are asked one by one. ``list_objects(prefix)`` yields
    ``(url, size)`` of the objects whose URL starts with ``prefix``. Returns the size of each plate's object
    the listing found, by URL. A missing plate is a ConfigError naming its key, as for a local file.
    """
    pattern = config["dataset"]["path"]
    urls = {p: plate_path(pattern, p) for p in [*config["plates"]["train"], *config["plates"]["validation"]]}
    prefix = pattern[: pattern.index("{")]
    wanted, listed = set(urls.values()), {}
    budget = LISTED_KEYS_PER_PLATE * len(urls) + 1000
    for n, (url, size) in enumerate(list_objects(prefix)):
        if url in wanted:
            listed[url] = size
        if n + 1 >= budget or len(listed) == len(wanted):
            break
    for key in ("plates.train", "plates.validation"):
        for plate in config["plates"][key.split(".")[1]]:
            url = urls[plate]
            if url not in listed and not exists(url):
                raise ConfigError(f"config key {key}: plate {plate!r} not found: {url} does not exist (dataset.path)")
    platemap = config["dataset"].get("platemap")
    if on_s3(platemap) and not exists(platemap):
        raise ConfigError(f"config key dataset.platemap: {platemap} does not exist")
    return listed


def resolve_platemaps(
    dataset: dict,
    plates: list[str],
    exists: Callable[[str], bool] | None = None,
    local_copy: Callable[[str], str] | None = None,
) -> dict[str, str | None]:
    """Each plate's own platemap file (a local path, or an s3:// URL the rules fetch through the plugin).

    Rules take that one file as input (not barcode_platemap.csv), so adding a plate's row to
    barcode_platemap.csv does not rerun the other plates.

    S3 locations need the storage plugin, given as two functions of an s3:// URL: ``exists`` and
    ``local_copy`` (fetch it now, return the local path). A barcode_platemap.csv on S3 is fetched while the
    Snakefile is parsed, because it decides each plate's input; a platemap_dir on S3 costs one existence
    check per platemap name and suffix tried, not per plate.
    """
    keys = {k: dataset.get(k) for k in ("barcode_platemap", "platemap_dir", "platemap")}
    if any(on_s3(v) for v in keys.values()):
        return _resolve_platemaps_s3(keys, plates, exists, local_copy)
    try:
        files = {p: platemap_file(p, **keys) for p in plates}
    except InputError as e:
        raise ConfigError(f"config key dataset.barcode_platemap: {e}") from e
    return {p: None if f is None else str(f) for p, f in files.items()}


def _resolve_platemaps_s3(keys: dict, plates: list[str], exists, local_copy) -> dict[str, str | None]:
    if exists is None or local_copy is None:
        raise ConfigError("config key dataset: platemaps on S3 need the storage plugin (exists, local_copy)")
    if keys["platemap"] is not None:
        return {p: keys["platemap"] for p in plates}
    barcode_platemap, platemap_dir = keys["barcode_platemap"], keys["platemap_dir"]
    table = local_copy(barcode_platemap) if on_s3(barcode_platemap) else barcode_platemap
    try:
        names = {p: platemap_name(p, table) for p in plates}
    except InputError as e:
        raise ConfigError(f"config key dataset.barcode_platemap ({barcode_platemap}): {e}") from e
    if not on_s3(platemap_dir):
        try:
            return {p: str(platemap_file(p, barcode_platemap=table, platemap_dir=platemap_dir)) for p in plates}
        except InputError as e:
            raise ConfigError(f"config key dataset.platemap_dir: {e}") from e
    found = {}
    for name in sorted(set(names.values())):
        candidates = [f"{platemap_dir.rstrip('/')}/{name}{suffix}" for suffix in PLATEMAP_SUFFIXES]
        found[name] = next((url for url in candidates if exists(url)), None)
        if found[name] is None:
            raise ConfigError(
                f"config key dataset.platemap_dir: no platemap file {name}{'|'.join(PLATEMAP_SUFFIXES)} in {platemap_dir}"
            )
    return {p: found[names[p]] for p in plates}
