"""Training a CytoSummaryNet-style set model on the training plates' training compounds.

The checkpoint is selected by validation mAP, computed for real (all cells of every well, the
same AP as the evaluation step) on the validation compounds of the training plates. A state file
written after every epoch lets a killed job resume where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
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
from .network import DeepSets, ModelSpec, pick_device
from .precision import autocast, resolve_precision
from .sampler import BatchGatherer, SetSampler, SetSizeSchedule, cells_tensor

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
    cell_hidden: int
    head_hidden: int
    out_dim: int
    pooling: str
    head: str
    loss: str
    temperature: float
    margin: float
    seed: int
    patience: int | None
    eval_every: int

    def model_spec(self, n_features: int) -> ModelSpec:
        return ModelSpec(n_features, self.cell_hidden, self.head_hidden, self.out_dim, self.pooling, self.head)


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

    Each plate is embedded once (all cells per well) and scored for every split.
    """
    per_plate: dict[str, list[float]] = {name: [] for name in splits}
    model.eval()
    for p in plates:
        profiles = None
        for name, compounds in splits.items():
            keep = np.isin(p.perturbations, list(compounds))
            if keep.sum() < 2:
                continue
            if profiles is None:
                profiles = embed_cells(model, p, device, precision)
            ap = average_precision(profiles[keep], p.perturbations[keep])
            ap["compound"] = p.perturbations[keep]
            by_compound = ap.dropna(subset=["average_precision"]).groupby("compound")["average_precision"].mean()
            if len(by_compound):
                per_plate[name].append(by_compound.mean())
    model.train()
    return {name: float(np.mean(v)) if v else float("nan") for name, v in per_plate.items()}


def _run_epoch(
    model, opt, loss_fn, loss_kw, plates, samplers, schedule, settings, rng, device, pool, resident=None, gatherer=None,
    *, precision: str,
) -> tuple[list, float]:
    """One pass over every training plate's compounds; returns the step losses and the seconds spent waiting for data.

    The next step's cells are gathered in a worker thread while the current step computes. Random
    draws happen in the main thread, in the same order as without prefetching, so a seed gives the
    same run either way. ``resident``: each plate's cells as a tensor on ``device`` (see
    :func:`resident_cells`); batches are then gathered there, with no host copy per step. ``gatherer``:
    the host path's buffers, kept from one epoch to the next (made here if not given). ``precision``: ``fp32``
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
        t = time.perf_counter()
        if resident is not None:
            x = batch
        else:
            x = batch.result().to(device, non_blocking=True)
            gatherer.copied(slot)
        waited += time.perf_counter() - t
        pending = plan(order[pos + 1]) if pos + 1 < len(order) else None
        with autocast(device, precision):
            emb = model(x)
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


def _fingerprint(plates: list[PlateCells], stores: list, features: list[str], settings: TrainSettings,
                 precision: str) -> str:
    """What a resumable state must match: inputs (size, mtime), features, every setting and the arithmetic
    (``auto`` may mean another one on another machine)."""
    h = hashlib.sha256()
    for plate, store in zip(plates, stores):
        for path in sorted(Path(store).iterdir()):
            st = os.stat(path)
            h.update(f"{plate.plate}:{path.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(json.dumps([features, asdict(settings), __version__, precision], sort_keys=True).encode())
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
    state = torch.load(path, map_location="cpu", weights_only=True)
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
                precision: str) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
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
    device = pick_device(settings.device)
    precision = resolve_precision(settings.precision, device)
    logger.info("training on %s in %s with %d thread(s); %d plates, %d features", device, precision, threads,
                len(stores), len(features))
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)

    loaded = sorted(((_load_training_plate(s, features, settings.annotation), s) for s in stores), key=lambda p: p[0].plate)
    plates, stores = [p for p, _ in loaded], [s for _, s in loaded]
    if len({p.plate for p in plates}) < len(plates):
        raise InputError(f"training plates named twice: {sorted(p.plate for p in plates)}")
    compounds = sorted({c for p in plates for c in p.perturbations} - {NEGCON})
    split = settings.split.of(compounds)
    train_compounds = {c for c, s in split.items() if s == "train"}
    val_compounds = {c for c, s in split.items() if s == "validation"}
    logger.info("%d training compounds, %d validation compounds", len(train_compounds), len(val_compounds))
    if not train_compounds:
        raise InputError("compounds.validation leaves no training compound")
    samplers = [SetSampler(p, sorted(train_compounds), settings.n_views, settings.max_wells_per_set) for p in plates]
    schedule = SetSizeSchedule(settings.cells_mean, settings.cells_std, settings.cells_min)

    model = DeepSets(settings.model_spec(len(features))).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    loss_fn = LOSSES.get(settings.loss)
    if loss_fn is None:
        raise InputError(f"train.loss must be one of {sorted(LOSSES)}, got {settings.loss!r}")
    loss_kw = {"temperature": settings.temperature} if settings.loss == "supcon" else {"margin": settings.margin}

    out_model = Path(out_model)
    state_path = out_model.with_name("resume_state.pt")
    best_path = out_model.with_name("best_model.pt.partial")
    fingerprint = _fingerprint(plates, stores, features, settings, precision)
    progress = _resume(state_path, fingerprint, model, opt, rng) if resume else _Progress()

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
                precision=precision,
            )
            row = {
                "epoch": epoch,
                "loss": float(np.mean(losses)) if losses else float("nan"),
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
                                           precision), best_path)
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
    logger.info("best epoch %d (selection score %.4f)", best["epoch"], best["score"])
    return {"best_epoch": best["epoch"], "best_score": best["score"], "epochs_run": len(progress.history)}
