"""Profile pipelines: the field's processing of well profiles, applied to every method's (the model's too).

Nobody retrieves replicates from raw well means: profiles are normalized per plate against its negative-control
wells, often sphered on the controls, and Harmony-corrected when plates are pooled (jump-profiling-recipe;
Arevalo et al. 2024). Every method's profiles go through the same pipelines, so the tables compare the model
with what a profiling scientist already uses:

- ``raw``: the profiles as aggregated or embedded;
- ``negcon_mad``: per plate, pycytominer 1.7.1's ``normalize(method="mad_robustize", samples=<the plate's
  negative controls>)``: (x - median) / (1.4826 MAD + 1e-18) with the median and MAD of the plate's
  negative-control wells. A feature with no spread on the controls is set to 0 (pycytominer divides by
  epsilon, which turns it into the largest feature by 18 orders of magnitude);
- ``negcon_mad_sphere``: then sphering (pycytominer's ``Spherize``: ZCA, PCA, ZCA-cor or PCA-cor, epsilon added
  to the singular values) fit on the negative-control wells of the TRAINING plates after their negcon_mad, and
  applied to every plate: adding a validation plate changes nothing already computed;
- ``harmony``: negcon_mad, then PCA and Harmony (harmonypy) over the plates of a split, batch = plate; for
  ``evaluate.reference: split``, where replicates on other plates count.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..io.columns import Annotation
from ..io.files import InputError, atomic_path
from ..io.parquet import read_profiles, write_profiles
from ..preprocess.statistics import NormalizerParams, apply_normalizer, fit_normalizer
from ..settings import Settings

logger = logging.getLogger(__name__)

PIPELINES = ("raw", "negcon_mad", "negcon_mad_sphere", "harmony")
NEGCON_PIPELINES = ("negcon_mad", "negcon_mad_sphere", "harmony")
MAD_EPSILON = 1e-18  # pycytominer's mad_robustize_epsilon
KEY_SEPARATOR = "__"


def profile_key(method: str, pipeline: str) -> str:
    """The name of one method's profiles through one pipeline (a file name part and a rule's input name)."""
    return f"{method}{KEY_SEPARATOR}{pipeline}"


def split_key(key: str) -> tuple[str, str]:
    """(method, pipeline) of a :func:`profile_key`."""
    method, sep, pipeline = key.rpartition(KEY_SEPARATOR)
    if not sep or pipeline not in PIPELINES:
        raise InputError(f"{key!r} is not METHOD{KEY_SEPARATOR}PIPELINE with a pipeline of {list(PIPELINES)}")
    return method, pipeline


@dataclass(frozen=True)
class SpheringSettings(Settings):
    """Config ``evaluate.sphering``: pycytominer Spherize's method and epsilon."""

    method: str  # ZCA | PCA | ZCA-cor | PCA-cor
    epsilon: float


@dataclass(frozen=True)
class PipelineSettings(Settings):
    """The profile pipelines to run (config ``evaluate.pipelines``), their settings, and the metadata columns."""

    annotation: Annotation
    pipelines: list[str]
    sphering: SpheringSettings


# ------------------------------------------------------------------------------------------ the operations


def negcon_mad(meta: pd.DataFrame, x: np.ndarray, annotation: Annotation, where: str) -> np.ndarray:
    """One plate's profiles, mad_robustized against its negative-control wells (float64; see the module)."""
    negcon = annotation.negcon_mask(meta)
    if annotation.negcon_value is None:
        raise InputError(f"{where}: the negcon_mad pipelines need negative controls, but metadata.negcon_value is null")
    if negcon.sum() < 2:
        raise InputError(
            f"{where}: {int(negcon.sum())} negative-control well(s) ({annotation.negcon_col} == "
            f"{annotation.negcon_value!r}); the negcon_mad pipelines need at least 2 on every plate "
            "(drop them from evaluate.pipelines for plates without controls)"
        )
    out = np.zeros(x.shape, dtype=np.float64)
    params = fit_normalizer(x[negcon], "mad_robustize", MAD_EPSILON)
    out[:, params.kept] = apply_normalizer(x, params)
    return out


def fit_sphering(x_negcon: np.ndarray, settings: SpheringSettings) -> NormalizerParams:
    """pycytominer's Spherize fit on negative-control profiles (after negcon_mad): constant features left out."""
    return fit_normalizer(x_negcon, "spherize", settings.epsilon, settings.method, spherize_center=True)


def sphere(x: np.ndarray, params: NormalizerParams) -> np.ndarray:
    return apply_normalizer(x, params)


def sphered_names(features: list[str], params: NormalizerParams) -> list[str]:
    """Column names after sphering: the kept features (ZCA: each output is its input feature, whitened) or PCs."""
    if params.spherize_method in ("PCA", "PCA-cor"):
        return [f"PC{i}" for i in range(1, params.n_out + 1)]
    return [features[i] for i in params.kept]


def harmony(x: np.ndarray, batches: np.ndarray, n_components: int = 50, seed: int = 0) -> np.ndarray:
    """PCA of the (negcon_mad) profiles, then Harmony with the plate as batch: (wells, components)."""
    import harmonypy

    xc = x - x.mean(axis=0)
    k = max(1, min(n_components, xc.shape[1], xc.shape[0] - 1))
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    pcs = u[:, :k] * s[:k]
    meta = pd.DataFrame({"batch": pd.Categorical(np.asarray(batches).astype(str))})
    result = harmonypy.run_harmony(pcs, meta, ["batch"], random_state=seed, verbose=False)
    z = np.asarray(result.Z_corr)
    return z.T if z.shape[0] == k and z.shape[1] == len(x) else z


# ------------------------------------------------------------------------------------------ the steps


def _read(path, annotation: Annotation) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    meta, x, features = read_profiles(path)
    for col in (annotation.plate_col, annotation.well_col):
        if col not in meta.columns:
            raise InputError(f"{path}: no column {col!r}")
    return meta, x.astype(np.float64), features


def _frame(meta: pd.DataFrame, y: np.ndarray, names: list[str]) -> pd.DataFrame:
    return pd.concat([meta.reset_index(drop=True), pd.DataFrame(y, columns=names)], axis=1)


def fit_sphering_step(raw: dict[str, list], out, settings: PipelineSettings) -> dict[str, int]:
    """The sphering fit: for each method (``raw``: method -> its training plates' raw profile files), the
    training plates' negcon_mad profiles of their negative-control wells -> one fit per method in ``out`` (npz)."""
    arrays: dict[str, np.ndarray] = {}
    fitted = {}
    for method, files in raw.items():
        controls, features = [], None
        for path in files:
            meta, x, names = _read(path, settings.annotation)
            if features is not None and names != features:
                raise InputError(f"{path}: feature columns differ from those of {files[0]}")
            features = names
            controls.append(negcon_mad(meta, x, settings.annotation, str(path))[settings.annotation.negcon_mask(meta)])
        try:
            params = fit_sphering(np.concatenate(controls), settings.sphering)
        except InputError as e:
            raise InputError(f"sphering of {method} profiles on the training plates' negative controls: {e}") from e
        fitted[method] = params.n_out
        arrays |= {f"{method}/kept": params.kept, f"{method}/center": params.center, f"{method}/scale": params.scale,
                   f"{method}/rotation": params.rotation, f"{method}/n_fit": np.array(params.n_fit),
                   f"{method}/features": np.array(features, dtype=str)}
        logger.info("%s: sphering (%s, epsilon %g) fit on %d negative-control wells x %d features",
                    method, settings.sphering.method, settings.sphering.epsilon, params.n_fit, len(params.kept))
    arrays["sphering_method"] = np.array(settings.sphering.method)
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return fitted


def load_sphering(path, method: str, features: list[str]) -> NormalizerParams:
    with np.load(path, allow_pickle=False) as npz:
        if f"{method}/kept" not in npz.files:
            raise InputError(f"{path}: no sphering fit for method {method!r}")
        if list(npz[f"{method}/features"]) != list(features):
            raise InputError(f"{path}: the sphering of {method} was fit on other features than its profiles have")
        return NormalizerParams(
            "spherize", npz[f"{method}/kept"], npz[f"{method}/center"], npz[f"{method}/scale"],
            npz[f"{method}/rotation"], int(npz[f"{method}/n_fit"]), str(npz["sphering_method"]),
        )


def plate_pipelines(raw: dict[str, str], outputs: dict[str, str], sphering_fit, settings: PipelineSettings) -> None:
    """The per-plate step: each method's raw profiles of one plate (``raw``: method -> file) through the per-plate
    pipelines (``outputs``: profile_key(method, pipeline) -> file, for negcon_mad and negcon_mad_sphere).
    The plate's profiles are read once; sphering needs ``sphering_fit`` (:func:`fit_sphering_step`)."""
    wanted: dict[str, set[str]] = {}
    for key in outputs:
        method, pipeline = split_key(key)
        if pipeline not in ("negcon_mad", "negcon_mad_sphere"):
            raise InputError(f"{key}: the per-plate step writes negcon_mad and negcon_mad_sphere, not {pipeline}")
        if method not in raw:
            raise InputError(f"{key}: no raw profiles of {method} given")
        wanted.setdefault(method, set()).add(pipeline)
    for method, pipelines in wanted.items():
        meta, x, features = _read(raw[method], settings.annotation)
        normalized = negcon_mad(meta, x, settings.annotation, str(raw[method]))
        if "negcon_mad" in pipelines:
            write_profiles(_frame(meta, normalized, features), outputs[profile_key(method, "negcon_mad")])
        if "negcon_mad_sphere" in pipelines:
            if sphering_fit is None:
                raise InputError("the negcon_mad_sphere pipeline needs the training plates' sphering fit")
            params = load_sphering(sphering_fit, method, features)
            y = sphere(normalized, params)
            write_profiles(_frame(meta, y, sphered_names(features, params)),
                           outputs[profile_key(method, "negcon_mad_sphere")])


def harmony_step(raw: dict[str, list], outputs: dict[str, list], settings: PipelineSettings, seed: int = 0) -> None:
    """Harmony over the plates given (all plates of a split): each method's raw profiles (method -> files, one per
    plate) -> negcon_mad per plate -> PCA + Harmony over all of them -> one file per plate (``outputs``: method ->
    files, in the same order)."""
    for method, files in raw.items():
        metas, xs = [], []
        for path in files:
            meta, x, _ = _read(path, settings.annotation)
            metas.append(meta)
            xs.append(negcon_mad(meta, x, settings.annotation, str(path)))
        x = np.concatenate(xs)
        plates = np.concatenate([m[settings.annotation.plate_col].astype(str).to_numpy() for m in metas])
        z = harmony(x, plates, seed=seed) if len(set(plates)) > 1 else x
        names = [f"harmony_{i + 1}" for i in range(z.shape[1])]
        start = 0
        for meta, out in zip(metas, outputs[method]):
            write_profiles(_frame(meta, z[start:start + len(meta)], names), out)
            start += len(meta)
