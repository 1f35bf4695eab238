"""Training a CytoSummaryNet-style set model on the training plates' training compounds.

The checkpoint is selected by validation mAP, computed for real (all cells of every well, the
same AP as the evaluation step) on the validation compounds of the training plates. A state file
written after every epoch lets a killed job resume where it stopped.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import __version__
from ..evaluate.average_precision import average_precision
from ..io.cells import PlateCells
from ..io.files import InputError, exclusive_lock, write_table
from ..io.columns import Annotation
from ..settings import Settings
from ..splits import CompoundSplit
from .cellstore import open_cell_store
from .checkpoint import CHECKPOINT_FORMAT, save_torch
from .inference import embed_cells
from .loss import LOSSES
from .negcon import NegconStats, negcon_cell_sample, parallel_analysis, param_groups, pca_negcon_init
from .network import DeepSets, ModelSpec, pick_device
from .precision import autocast, resolve_precision
from .sampler import BatchGatherer, FixedSetSize, SetSampler, SetSizeSchedule, cells_tensor

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class TrainSettings(Settings):
    """What training depends on: config ``train:`` (less ``checkpoint``, ``threads`` and ``embedding``, which do
    not change the trained model; its schema documents each field), the metadata columns, the compound
    split, and the normalization the cells went through (recorded in the checkpoint)."""

    annotation: Annotation
    split: CompoundSplit
    normalization: dict
    device: str
    precision: str  # auto | fp32 | bf16 (see cytoagg.model.precision)
    epochs: int
    lr: float
    weight_decay: float
    batch_compounds: int
    n_views: int
    max_wells_per_set: int
    cells_mean: float
    cells_std: float
    cells_min: int
    cell_hidden: int | str  # "auto" (with init pca_negcon): parallel analysis of the negative-control cells
    head_hidden: int
    out_dim: int
    pooling: str
    head: str
    cell_activation: str
    plate_norm: str
    init: str
    part_weight: float
    part_tau: float
    part_lr: float | None
    cell_lr: float | None
    loss: str
    temperature: float
    margin: float
    seed: int
    patience: int | None
    eval_every: int

    def model_spec(self, n_features: int) -> ModelSpec:
        return ModelSpec(
            n_features, self.cell_hidden, self.head_hidden, self.out_dim, self.pooling, self.head,
            cell_activation=self.cell_activation, plate_norm=self.plate_norm, part_weight=self.part_weight,
            part_tau=self.part_tau,
        )


NEGCON = "__negcon__"  # label of negative-control wells inside training: never a training or validation compound


def _load_training_plate(store, features: list[str], annotation: Annotation) -> PlateCells:
    """A packed plate (a cell store folder), negative-control wells relabelled so they are never items."""
    cells, wells = open_cell_store(store, annotation)
    if cells.x.shape[1] != len(features):
        raise InputError(f"{store}: {cells.x.shape[1]} features packed, but the feature list has {len(features)}")
    if annotation.negcon_value is not None:
        if annotation.negcon_col not in wells.columns:
            raise InputError(
                f"{store}: negative-control column {annotation.negcon_col!r} not found or not constant within wells"
            )
        cells.perturbations = np.where(annotation.negcon_mask(wells), NEGCON, cells.perturbations)
    return cells


def _split_maps(model: DeepSets, plates: list[PlateCells], splits: dict[str, set[str]], device,
                precision: str) -> dict[str, float]:
    """Per split of compounds: mean over plates of per-plate mAP (mean over compounds of their wells' AP).

    The yardstick of the final tables: each query well (a well of the split's compounds) ranks every other
    non-control well of its plate, whatever its compound's split. Each plate is embedded once (all cells per well)
    and scored for every split.
    """
    per_plate: dict[str, list[float]] = {name: [] for name in splits}
    model.eval()
    for p in plates:
        treated = p.perturbations != NEGCON
        if treated.sum() < 2:
            continue
        profiles = embed_cells(model, p, device, precision, negcon=~treated)[treated]
        labels = p.perturbations[treated]
        for name, compounds in splits.items():
            queries = np.isin(labels, list(compounds))
            if not queries.any():
                continue
            ap = average_precision(profiles, labels, query_mask=queries)
            ap["compound"] = labels[ap.index.to_numpy()]
            by_compound = ap.dropna(subset=["average_precision"]).groupby("compound")["average_precision"].mean()
            if len(by_compound):
                per_plate[name].append(by_compound.mean())
    model.train()
    return {name: float(np.mean(v)) if v else float("nan") for name, v in per_plate.items()}


def _run_epoch(
    model, opt, loss_fn, loss_kw, plates, samplers, schedule, settings, rng, device, pool, resident=None, gatherer=None,
    negcon_stats=None, *, precision: str,
) -> tuple[list, float]:
    """One pass over every training plate's compounds; returns the step losses and the seconds spent waiting for data.

    The next step's cells are gathered in a worker thread while the current step computes. Random
    draws happen in the main thread, in the same order as without prefetching, so a seed gives the
    same run either way. ``resident``: each plate's cells as a tensor on ``device`` (see
    :func:`resident_cells`); batches are then gathered there, with no host copy per step. ``gatherer``:
    the host path's buffers, kept from one epoch to the next (made here if not given). ``negcon_stats``: a
    :class:`~cytoagg.model.negcon.NegconStats` (models with plate normalization). ``precision``: ``fp32``
    or ``bf16`` (resolved): the model runs under :func:`~cytoagg.model.precision.autocast`, the loss in float32.
    """
    batches = [(k, b) for k, s in enumerate(samplers) for b in s.batches(settings.batch_compounds, rng)]
    order = rng.permutation(len(batches))
    gatherer = gatherer or BatchGatherer(pin=device.type == "cuda")
    sources = [cells_tensor(p.x) for p in plates] if resident is None else resident

    def plan(j):
        k, compound_idx = batches[j]
        idx, labels = samplers[k].sample(compound_idx, schedule.draw(rng), rng)
        if resident is not None:
            rows = torch.from_numpy(idx.ravel()).to(device, non_blocking=True)
            return labels, None, torch.index_select(resident[k], 0, rows).view(*idx.shape, -1)
        slot, buffer = gatherer.next_buffer(idx.size * plates[k].x.shape[1])
        return labels, slot, pool.submit(BatchGatherer.gather, sources[k], idx, buffer)

    losses, waited = [], 0.0
    pending = plan(order[0]) if len(order) else None
    for pos in range(len(order)):
        labels, slot, batch = pending
        k = batches[order[pos]][0]
        t = time.perf_counter()
        if resident is not None:
            x = batch
        else:
            x = batch.result().to(device, non_blocking=True)
            gatherer.copied(slot)
        waited += time.perf_counter() - t
        pending = plan(order[pos + 1]) if pos + 1 < len(order) else None
        stats = negcon_stats(k) if negcon_stats is not None else None
        with autocast(device, precision):
            emb = model(x, stats)
        loss = loss_fn(emb.float(), torch.from_numpy(labels).to(device), **loss_kw)
        value = loss.item()
        if not math.isfinite(value):
            raise InputError(
                f"training loss is {value} at step {pos + 1} of this epoch: training diverged (non-finite input cells "
                "or too high a train.lr); no model was written"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(value)
    return losses, waited


def resident_cells(plates, device, share: float = 0.5) -> list[torch.Tensor] | None:
    """The training plates' cells copied to the GPU once, when they fit in ``share`` of its free memory.

    A bf16 step at the paper's settings takes milliseconds on a GPU; gathering 100,000 cells on the
    host and copying them over takes longer. Held on the device, a batch is one ``index_select`` there.
    None on the CPU, or when the cells do not fit (then the host gathers, in a prefetching thread).
    """
    if device.type != "cuda":
        return None
    need = sum(p.x.nbytes for p in plates)
    free, _ = torch.cuda.mem_get_info(device)
    if need > share * free:
        logger.info("cells (%.1f GB) do not fit in %.0f%% of free GPU memory: gathered on the host", need / 1e9, 100 * share)
        return None
    logger.info("cells (%.1f GB) held on %s: batches gathered on the device", need / 1e9, device)
    return [cells_tensor(p.x).to(device) for p in plates]


def _fingerprint(inputs: list, features: list[str], settings: TrainSettings, input_kind: str, precision: str) -> str:
    """What a resumable state must match: inputs (size, mtime), features, every setting and the arithmetic
    (``auto`` may mean another one on another machine)."""
    h = hashlib.sha256()
    for path in inputs:
        st = os.stat(path)
        h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(json.dumps([features, asdict(settings), __version__, input_kind, precision], sort_keys=True).encode())
    return h.hexdigest()


def train_model(stores: list, features: list[str], out_model, out_log, settings: TrainSettings,
                threads: int = 1, resume: bool = True) -> dict:
    """Train on the training plates' cell stores (folders written by ``pack_cell_store``); write the best checkpoint.

    One trainer at a time per model folder (a lock file beside the resume state): a rerun started while
    an orphaned trainer still runs waits for it, then resumes from the state it left (or starts over,
    if it finished).
    """
    with exclusive_lock(Path(out_model).with_name(".train.lock"), logger):
        return _train_model(stores, features, out_model, out_log, settings, threads, resume)


@dataclass
class _Progress:
    """What a resumed run continues from: the per-epoch log, the best evaluation so far, and its age."""

    history: list = field(default_factory=list)
    best: dict | None = None
    since_best: int = 0
    next_epoch: int = 0


def _save_resume_state(path: Path, fingerprint: str, epoch: int, model, opt, rng, progress: _Progress) -> None:
    save_torch(
        {
            "fingerprint": fingerprint,
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": json.dumps(rng.bit_generator.state),
            "history": json.dumps(progress.history),
            "best": progress.best,
            "since_best": progress.since_best,
        },
        path,
    )


def _resume(path: Path, fingerprint: str, model, opt, rng) -> _Progress:
    """Restore model, optimizer and random states from ``path`` when it was written for these inputs and settings."""
    if not path.exists():
        return _Progress()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise TypeError(type(state).__name__)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise InputError(
            f"{path}: damaged training state ({type(e).__name__}), from a job killed while writing it or a damaged disk; "
            "delete it to restart training from the first epoch"
        ) from None
    if state.get("fingerprint") != fingerprint:
        logger.info("ignoring %s: it was written for other inputs or settings", path)
        return _Progress()
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    rng.bit_generator.state = json.loads(state["numpy_rng"])
    progress = _Progress(json.loads(state["history"]), state["best"], state["since_best"], state["epoch"] + 1)
    logger.info("resuming from epoch %d (state %s)", progress.next_epoch, path)
    return progress


def _checkpoint(model, features: list[str], settings: TrainSettings, plates: list[str], epoch: int, val_map: float,
                input_kind: str, precision: str, initial_state: dict | None = None) -> dict:
    return {
        "initial_state_dict": initial_state,
        "format": CHECKPOINT_FORMAT,
        "input": input_kind,
        "cytoagg_version": __version__,
        "precision": precision,  # the arithmetic it was trained in (train.precision resolved): fp32 | bf16
        "model_spec": model.spec.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "features": list(features),
        "normalization": dict(settings.normalization),
        "train_settings": asdict(settings),
        "epoch": epoch,
        "val_mAP": val_map,
        "train_plates": plates,
    }


def _train_model(
    stores: list,
    features: list[str],
    out_model: str | os.PathLike,
    out_log: str | os.PathLike,
    settings: TrainSettings,
    threads: int = 1,
    resume: bool = True,
) -> dict:
    torch.set_num_threads(max(1, threads))
    torch.manual_seed(settings.seed)
    loaded = sorted(((_load_training_plate(s, features, settings.annotation), s) for s in stores), key=lambda p: p[0].plate)
    plates, stores = [p for p, _ in loaded], [s for _, s in loaded]
    schedule = SetSizeSchedule(settings.cells_mean, settings.cells_std, settings.cells_min)
    return _fit(plates, [f for s in stores for f in sorted(Path(s).iterdir())], features, out_model, out_log, settings,
                threads, resume, schedule, settings.max_wells_per_set, "cells")


def train_on_means(profiles: list, out_model, out_log, settings: TrainSettings, threads: int = 1,
                   resume: bool = True) -> dict:
    """The ``mlp_on_mean`` control (the CytoSummaryNet reviewers'): the same network, loss, batches of compounds,
    epochs and checkpoint selection, trained on the training plates' well MEAN profiles instead of their cells.
    Each set is one well's mean profile (a set of one), so the network never sees a single cell and is an MLP on
    the mean: how much of the model's gain is metric learning rather than seeing cells."""
    with exclusive_lock(Path(out_model).with_name(".train.lock"), logger):
        torch.set_num_threads(max(1, threads))
        torch.manual_seed(settings.seed)
        plates, features = [], None
        for path in profiles:
            plate = means_as_cells(path, settings.annotation)
            if features is not None and plate[1] != features:
                raise InputError(f"{path}: feature columns differ from those of {profiles[0]}")
            features = plate[1]
            plates.append(plate[0])
        plates.sort(key=lambda p: p.plate)
        return _fit(plates, list(profiles), features, out_model, out_log, settings, threads, resume,
                    FixedSetSize(1), 1, "well_means")


def means_as_cells(path, annotation: Annotation) -> tuple[PlateCells, list[str]]:
    """A plate's mean profiles as a plate whose every well has one "cell": its mean (negative controls relabelled)."""
    from ..io.cells import plate_name
    from ..io.parquet import read_profiles

    meta, x, features = read_profiles(path)
    meta = meta.reset_index(drop=True)
    wells = meta[annotation.well_col].astype(str).to_numpy()
    perturbations = meta[annotation.perturbation_col].astype(str).to_numpy()
    if annotation.negcon_value is not None:
        perturbations = np.where(annotation.negcon_mask(meta), NEGCON, perturbations)
    order = np.argsort(wells, kind="stable")
    cells = PlateCells(plate_name(path, annotation), np.ascontiguousarray(x[order], dtype=np.float32),
                       np.arange(len(wells) + 1, dtype=np.int64), wells[order], perturbations[order])
    return cells, features


def _fit(plates: list[PlateCells], inputs: list, features: list[str], out_model, out_log, settings: TrainSettings,
         threads: int, resume: bool, schedule, max_wells_per_set: int, input_kind: str) -> dict:
    """The training loop, on plates of cells (or of well means, one per well)."""
    device = pick_device(settings.device)
    precision = resolve_precision(settings.precision, device)
    logger.info("training on %s in %s with %d thread(s); %d plates, %d features", device, precision, threads,
                len(plates), len(features))
    rng = np.random.default_rng(settings.seed)
    if len({p.plate for p in plates}) < len(plates):
        raise InputError(f"training plates named twice: {sorted(p.plate for p in plates)}")
    train_compounds, val_compounds = _compound_split(plates, settings.split)
    samplers = [SetSampler(p, sorted(train_compounds), settings.n_views, max_wells_per_set) for p in plates]

    model, initial_state = _initial_model(plates, features, settings, device)
    opt = torch.optim.AdamW(param_groups(model, settings.lr, settings.cell_lr, settings.part_lr), lr=settings.lr,
                            weight_decay=settings.weight_decay)
    negcon_stats = NegconStats(model, plates, NEGCON, device) if model.needs_negcon else None
    loss_fn = LOSSES.get(settings.loss)
    if loss_fn is None:
        raise InputError(f"train.loss must be one of {sorted(LOSSES)}, got {settings.loss!r}")
    loss_kw = {"temperature": settings.temperature} if settings.loss == "supcon" else {"margin": settings.margin}

    out_model = Path(out_model)
    state_path = out_model.with_name("resume_state.pt")
    best_path = out_model.with_name("best_model.pt.partial")
    fingerprint = _fingerprint(inputs, features, settings, input_kind, precision)
    progress = _resume(state_path, fingerprint, model, opt, rng) if resume else _Progress()

    if not val_compounds:
        logger.warning("no validation compound on the training plates (compounds.validation): the checkpoint is the "
                       "last epoch, not one selected by validation mAP, and no table measures held-out compounds")
    from tqdm import tqdm

    bar = tqdm(range(progress.next_epoch, settings.epochs), desc="train", mininterval=5.0,
               initial=progress.next_epoch, total=settings.epochs)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cytoagg-sampler")
    try:
        resident = resident_cells(plates, device)
        gatherer = BatchGatherer(pin=device.type == "cuda")
        for epoch in bar:
            t0 = time.perf_counter()
            losses, waited = _run_epoch(
                model, opt, loss_fn, loss_kw, plates, samplers, schedule, settings, rng, device, pool, resident, gatherer,
                negcon_stats, precision=precision,
            )
            if not losses:
                raise InputError(
                    f"epoch {epoch} ran no training step: no training plate has 2 training compounds to put in a "
                    "batch (train.batch_compounds needs at least 2 per plate); no model was written"
                )
            row = {
                "epoch": epoch,
                "loss": float(np.mean(losses)),
                "n_steps": len(losses),
                "sampling_wait_s": waited,
                "precision": precision,
            }
            if (epoch + 1) % settings.eval_every == 0 or epoch + 1 == settings.epochs:
                maps = _split_maps(model, plates, {"train": train_compounds, "validation": val_compounds}, device,
                                   precision)
                row["train_mAP"] = maps["train"]
                row["val_mAP"] = maps["validation"]
                score = row["val_mAP"] if val_compounds else float(epoch)
                if progress.best is None or score > progress.best["score"]:
                    progress.best, progress.since_best = {"score": score, "epoch": epoch}, 0
                    save_torch(_checkpoint(model, features, settings, [p.plate for p in plates], epoch, row["val_mAP"],
                                           input_kind, precision, initial_state), best_path)
                else:
                    progress.since_best += 1
            row["seconds"] = time.perf_counter() - t0
            progress.history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", val_mAP=f"{row.get('val_mAP', float('nan')):.3f}", refresh=False)
            _save_resume_state(state_path, fingerprint, epoch, model, opt, rng, progress)
            if settings.patience is not None and progress.since_best >= settings.patience:
                logger.info("early stop at epoch %d: no validation mAP gain for %d evaluations", epoch, progress.since_best)
                break
    finally:
        bar.close()
        pool.shutdown(cancel_futures=True)

    best = progress.best
    os.replace(best_path, out_model)
    write_table(pd.DataFrame(progress.history), out_log)
    state_path.unlink(missing_ok=True)
    if val_compounds:
        logger.info("best epoch %d (validation-compound mAP %.4f on the training plates)", best["epoch"], best["score"])
    else:
        logger.info("kept the last evaluated epoch, %d (no validation compound to select by)", best["epoch"])
    return {"best_epoch": best["epoch"], "best_score": best["score"] if val_compounds else None,
            "epochs_run": len(progress.history)}


def _initial_model(plates: list[PlateCells], features: list[str], settings: TrainSettings, device):
    """The network training starts from, and its weights when they come from the data (``init: pca_negcon``; the
    ``model_untrained`` control is rebuilt from them), else None (the seed alone rebuilds it)."""
    if settings.init not in ("random", "pca_negcon"):
        raise InputError(f"train.init must be 'random' or 'pca_negcon', got {settings.init!r}")
    negcon_cells = negcon_cell_sample(plates, NEGCON, 200_000, settings.seed) if settings.init == "pca_negcon" else None
    model_settings = settings
    if settings.cell_hidden == "auto":
        if negcon_cells is None:
            raise InputError("train.cell_hidden 'auto' needs train.init 'pca_negcon'")
        k = parallel_analysis(negcon_cells, seed=settings.seed)
        logger.info("cell_hidden auto: %d components above parallel analysis' null (of %d features)", k, len(features))
        model_settings = replace(settings, cell_hidden=max(1, k))
    model = DeepSets(model_settings.model_spec(len(features))).to(device)
    if negcon_cells is None:
        return model, None
    pca_negcon_init(model, negcon_cells)
    return model, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _compound_split(plates: list[PlateCells], split: CompoundSplit) -> tuple[set[str], set[str]]:
    """The training plates' training and validation compounds; refuses splits that leave nothing to learn."""
    compounds = sorted({c for p in plates for c in p.perturbations} - {NEGCON})
    if isinstance(split.validation, (list, tuple)):
        absent = sorted(set(split.validation) - set(compounds))
        if absent:
            raise InputError(
                f"compounds.validation names {len(absent)} compound(s) that no training plate has: {absent[:10]} "
                "(a typo? names must match the perturbation column exactly; a compound only validation plates "
                "have needs no holding out)"
            )
    by_split = split.of(compounds)
    train = {c for c, s in by_split.items() if s == "train"}
    validation = {c for c, s in by_split.items() if s == "validation"}
    logger.info("%d training compounds, %d validation compounds", len(train), len(validation))
    for p in plates:
        if not np.isin(p.perturbations, list(train)).any():
            raise InputError(f"training plate {p.plate} has no well of a training compound (compounds.validation "
                             "holds out all of its compounds, or it has only negative controls)")
    wells = collections.Counter(c for p in plates for c in p.perturbations)
    replicated = {c for c in train if wells[c] >= 2}
    if len(replicated) < 2:
        raise InputError(
            f"{len(replicated)} training compound(s) with replicate wells on the training plates "
            f"({sorted(replicated)}): contrastive training needs at least 2 (compounds.validation holds out "
            f"{len(validation)} of {len(compounds)})"
        )
    return train, validation
