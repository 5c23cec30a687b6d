"""The one training loop every method runs in.

Data live on the device as tensors (uint8 images are normalised per batch), batches are slices of a seeded
permutation, and the method supplies only the loss (see :mod:`nlbench.methods.base`). The loop records per-epoch
test accuracy, noisy-validation accuracy, epoch wall time and, for reweighting methods, weight telemetry, and
returns the run's record (see :mod:`nlbench.benchmark.records` and the README for the schema). A method of
several stages (:meth:`nlbench.methods.Method.stages`: ``forward`` and ``glc`` train a second network after the
first) runs the config's epochs once per stage in this loop, the schedule restarted at each boundary; its
history marks each epoch's ``stage``, the record says ``stages``, and ``final`` summarises the last stage, with
its epochs counted within it.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np
import torch

from nlbench.benchmark import checkpoint as ckpt
from nlbench.benchmark.augment import random_crop_flip
from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.env import environment, make_generator, seed_int, select_device
from nlbench.benchmark.features import FeatureView
from nlbench.benchmark.progress import ProgressBar
from nlbench.benchmark.records import SCHEMA_VERSION, ensure_runs_dir, find_record, record_path, write_record
from nlbench.benchmark.schema import STAGES
from nlbench.benchmark.splits import Splits, make_splits
from nlbench.benchmark.telemetry import weight_telemetry
from nlbench.datasets import DATASETS, Dataset, load_dataset
from nlbench.errors import DivergenceError, NLBenchError
from nlbench.methods import Batch, MethodContext, TrainData, TrainSet, create_method, get_method
from nlbench.models import MODELS, create_model
from nlbench.noise import (
    NoiseContext,
    apply_noise,
    noise_family,
    noise_report,
    noise_rng,
    nominal_rate,
    parse_noise,
    standardise_features,
)
from nlbench.options import bind_options
from nlbench.portable import check as portable_check

EVAL_BATCH = 1000
#: Most stages a method may train (Method.stages): as many as the record schema accepts.
MAX_STAGES = STAGES.high


def lr_at(cfg: RunConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate at global ``step``: per-step cosine to 0, step decay at ``milestones`` (epochs), or constant."""
    if cfg.schedule == "cosine":
        total = cfg.epochs * steps_per_epoch
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total))
    if cfg.schedule == "step":
        epoch = step // steps_per_epoch
        return cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    return cfg.lr


def lr_at_progress(cfg: RunConfig, epochs_done: float) -> float:
    """Learning rate after ``epochs_done`` (fractional) epochs: the schedule of :func:`lr_at` for a method whose
    epochs have their own number of steps (:meth:`Method.epoch_steps`)."""
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * epochs_done / cfg.epochs))
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** sum(math.floor(epochs_done) >= m for m in cfg.milestones)
    return cfg.lr


def make_prep(dataset: Dataset, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """Raw batch -> model input: uint8 images become normalised float (channels_last on CUDA)."""
    if dataset.x_train.dtype != torch.uint8:
        return lambda x: x
    c = dataset.x_train.shape[1]
    mean = torch.tensor(dataset.mean or (0.5,) * c, device=device).view(1, -1, 1, 1)
    std = torch.tensor(dataset.std or (0.5,) * c, device=device).view(1, -1, 1, 1)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format

    def prep(x: torch.Tensor) -> torch.Tensor:
        return ((x.float() / 255.0 - mean) / std).contiguous(memory_format=fmt)

    return prep


def autocast_factory(device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 autocast on CUDA (no GradScaler needed), nothing on the CPU."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


@dataclass
class NoisyPool:
    """Positions (in the training split) and labels of the meta set, validation split and noisy pool."""

    splits: Splits
    pool_noisy: np.ndarray
    val_noisy: np.ndarray
    noise_report: dict
    val_noise_report: dict | None
    #: positions in the dataset's own meta samples (``Dataset.x_meta``) when it provides them; then
    #: ``splits.meta`` is empty
    dataset_meta: np.ndarray | None = None

    @property
    def meta_size(self) -> int:
        return len(self.splits.meta) if self.dataset_meta is None else len(self.dataset_meta)


def noisy_pool(cfg: RunConfig, dataset: Dataset) -> NoisyPool:
    """Carve the meta set and validation split (before noise), then apply the noise to the pool and, with an
    independent stream, to the validation split. Everything is drawn from the noise seed."""
    spec = parse_noise(cfg.noise)
    if not dataset.true_labels and spec.name != "clean":
        raise NLBenchError(f"dataset {dataset.name!r} has real noisy labels and no true ones: run it with "
                           f"--noise clean, not {spec.name!r}")
    y = dataset.y_train.numpy()
    C = dataset.num_classes
    dataset_meta = None
    if dataset.y_meta is None:
        splits = make_splits(y, C, cfg.meta_size, cfg.val_size, noise_rng(cfg.effective_noise_seed, stream=1))
    else:  # the dataset's trusted samples give the meta set; the training split gives validation and pool
        dataset_meta = make_splits(dataset.y_meta.numpy(), C, cfg.meta_size, 0,
                                   noise_rng(cfg.effective_noise_seed, stream=4), keep_pool=False).meta
        splits = make_splits(y, C, 0, cfg.val_size, noise_rng(cfg.effective_noise_seed, stream=1))
    feats_cache: dict[str, np.ndarray] = {}

    def features() -> np.ndarray:  # idn only: computed once, lazily
        if "x" not in feats_cache:
            feats_cache["x"] = standardise_features(dataset.x_train.numpy())
        return feats_cache["x"]

    def noisy_labels(idx: np.ndarray, stream: int) -> tuple[np.ndarray, np.ndarray]:
        ctx = NoiseContext(asym_map=dataset.asym_map, features=lambda: features()[idx],
                           human=dataset.human_labels, indices=idx, dataset=dataset.name)
        return apply_noise(spec, y[idx], C, noise_rng(cfg.effective_noise_seed, stream=stream), ctx)

    pool_noisy, T = noisy_labels(splits.pool, 2)
    report = {"spec": spec.name, **noise_report(y[splits.pool], pool_noisy, C, nominal=T)}
    val_noisy, val_report = np.zeros(0, dtype=np.int64), None
    if len(splits.val):
        val_noisy, _ = noisy_labels(splits.val, 3)
        val_report = {"realised_rate": float(np.mean(val_noisy != y[splits.val]))}
    return NoisyPool(splits, pool_noisy, val_noisy, report, val_report, dataset_meta)


def to_device(noisy: NoisyPool, dataset: Dataset, device: torch.device) -> TrainData:
    """Move the splits to ``device`` as the tensors the loop and the methods use."""
    y = dataset.y_train.numpy()
    s = noisy.splits

    def t(a) -> torch.Tensor:
        return torch.as_tensor(a).to(device)

    def rows(idx: np.ndarray) -> torch.Tensor:
        return t(dataset.x_train[torch.from_numpy(idx)])

    return TrainData(
        pool=TrainSet(rows(s.pool), t(noisy.pool_noisy), t(noisy.pool_noisy != y[s.pool])),
        pool_true=t(y[s.pool]),
        meta_x=rows(s.meta) if noisy.dataset_meta is None else t(dataset.x_meta[torch.from_numpy(noisy.dataset_meta)]),
        meta_y=t(y[s.meta]) if noisy.dataset_meta is None else t(dataset.y_meta.numpy()[noisy.dataset_meta]),
        val_x=rows(s.val), val_y=t(noisy.val_noisy), test_x=t(dataset.x_test), test_y=t(dataset.y_test),
        num_classes=dataset.num_classes,
    )


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, prep, autocast) -> float:
    """Accuracy of ``model`` in eval mode (NaN for an empty split)."""
    if len(y) == 0:
        return float("nan")
    model.eval()
    correct = torch.zeros((), device=y.device, dtype=torch.long)
    for i in range(0, len(y), EVAL_BATCH):
        with autocast():
            logits = model(prep(x[i:i + EVAL_BATCH]))
        correct += (logits.argmax(1) == y[i:i + EVAL_BATCH]).sum()
    return correct.item() / len(y)


def canonical_config(cfg: RunConfig) -> RunConfig:
    """Resolve aliases (``fbr`` -> ``surrogate``) and check every name, so equal runs hash equally: the noise
    spec's canonical name (``SYM040`` -> ``sym40``), and method and dataset options checked and converted to
    their annotated types (``q="0.7"`` and ``q=0.7`` are one run; ``q=inf`` is refused before any work). The
    method's defaults for the noise's family (:attr:`Method.family_defaults`) join the method options where they
    are not set, so they are part of the config and its hash. A
    dataset that is not registered (a :class:`Dataset` passed to :func:`train`) keeps its options as given."""
    method = get_method(cfg.method)
    cfg.method = method.name
    cfg.noise = parse_noise(cfg.noise).name
    MODELS.canonical(cfg.model)
    family = method.family_defaults.get(noise_family(cfg.noise), {})
    cfg.method_options = bind_options(method.__init__, {**family, **cfg.method_options}, f"method {method.name!r}")
    if cfg.dataset in DATASETS:
        cfg.dataset_options = bind_options(DATASETS.get(cfg.dataset), cfg.dataset_options,
                                           f"dataset {cfg.dataset!r}", skip=("root", "download"))
    return cfg


def train(cfg: RunConfig, *, data_root: str | os.PathLike | None = None, device: str = "auto",
          results_dir: str | os.PathLike | None = None, progress: bool = False, resume: bool = True,
          dataset: Dataset | None = None, download: bool = False, compile_model: bool = False,
          checkpoint_dir: str | os.PathLike | None = None, checkpoint_every: float | None = 60.0) -> dict:
    """Run one setting and return its record; with ``results_dir`` the record is also written atomically.

    With ``resume`` and a finished record of the same config already in ``results_dir``, that record is returned
    without training. A non-finite loss ends the run with ``status = "failed"`` and the epoch.
    ``compile_model`` wraps the model's feature extractor in ``torch.compile`` (useful on a GPU).

    Checkpoints (:mod:`nlbench.benchmark.checkpoint`) go to ``checkpoint_dir`` (default with ``results_dir``:
    ``results_dir/checkpoints``) at the end of an epoch once ``checkpoint_every`` seconds have passed since the
    last one (0: every epoch; ``None``: never). A run finding its own checkpoint there continues from it
    (unless ``resume`` is false; a checkpoint is only ever read with ``weights_only=True``) with the history an
    uninterrupted run would have; the checkpoint is removed when the record is written (by the caller if
    ``results_dir`` is None).
    """
    portable_check()  # NLBENCH_PORTABLE: the CPU kernels must be pinned before the run computes anything
    cfg = canonical_config(cfg)
    if checkpoint_dir is None and results_dir is not None:
        checkpoint_dir = ckpt.checkpoints_dir(results_dir)
    kw = dict(data_root=data_root, device=device, progress=progress, dataset=dataset, download=download,
              compile_model=compile_model, checkpoint_every=checkpoint_every, resume=resume,
              checkpoint_dir=checkpoint_dir)
    if results_dir is None:
        return _train(cfg, results_dir=None, **kw)
    if resume and (done := _finished(results_dir, cfg)) is not None:
        return done
    ensure_runs_dir(results_dir)
    # The claim a grid driver takes (nlbench.benchmark.grid.claims.Claims), so a run and a grid, or two runs, never
    # train the same config into the same folder at once.
    from nlbench.benchmark.grid.claims import Claims, claim_path, remove_claims_dir

    claims = Claims(results_dir)
    if not claims.acquire(cfg.run_name()):
        remove_claims_dir(results_dir)
        raise NLBenchError(f"run {cfg.run_name()} is being trained by another live process (claim "
                           f"{claim_path(results_dir, cfg.run_name())}); wait for it, or use another --results-dir")
    claims.start_heartbeat()
    try:
        if resume and (done := _finished(results_dir, cfg)) is not None:  # finished while we were claiming
            return done
        return _train(cfg, results_dir=results_dir, **kw)
    finally:
        claims.stop_heartbeat()
        claims.release_all()
        remove_claims_dir(results_dir)


def _finished(results_dir: str | os.PathLike, cfg: RunConfig) -> dict | None:
    done = find_record(results_dir, cfg.run_name())
    if done is not None:
        done["resumed"] = True
        done["path"] = str(record_path(results_dir, cfg.run_name()))  # the stored copy has no path of its own
    return done


def _train(cfg: RunConfig, *, data_root: str | os.PathLike | None, device: str,
           results_dir: str | os.PathLike | None, progress: bool, dataset: Dataset | None, download: bool,
           compile_model: bool, checkpoint_dir: str | os.PathLike | None, checkpoint_every: float | None,
           resume: bool) -> dict:
    """:func:`train` once the claim (if any) is held: train ``cfg`` and write its record to ``results_dir``."""
    t_start = time.perf_counter()
    dev = select_device(device)
    if dataset is None:
        dataset = load_dataset(cfg.dataset, data_root, download=download, **cfg.dataset_options)
    if cfg.augment and len(dataset.input_shape) != 3:  # crop + flip needs images (channels, height, width)
        raise NLBenchError(f"--augment needs an image dataset; {cfg.dataset!r} has inputs of shape "
                           f"{tuple(dataset.input_shape)}")
    method = create_method(cfg.method, **cfg.method_options)
    if method.oracle and not dataset.true_labels:
        raise NLBenchError(f"method {cfg.method!r} reads the true labels, which dataset {dataset.name!r} does not "
                           "have")
    noisy = noisy_pool(cfg, dataset)
    data = to_device(noisy, dataset, dev)
    # Enforced, not trusted: a method that does not declare the meta set never sees it (the feature view, which
    # is telemetry, still projects with it).
    seen = data if method.uses_meta else replace(data, meta_x=data.meta_x[:0], meta_y=data.meta_y[:0])
    train_set = method.train_set(seen)
    view = FeatureView.create(cfg.record_options, cfg.epochs, cfg.effective_noise_seed, noisy.pool_noisy,
                              dataset.y_train.numpy()[noisy.splits.pool], noisy.meta_size, dataset.classes)
    n = len(train_set)
    if n < 2:
        raise NLBenchError(f"method {cfg.method!r} has {n} training samples; nothing to train on")

    def build_model(k: int) -> torch.nn.Module:
        # module init uses the global RNG: fence it off, seeded; stream k = 0 is the main model's (k >= 1: a
        # method's extra networks)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_int(cfg.seed, 1) if k == 0 else seed_int(cfg.seed, 1, k))
            try:
                net = create_model(cfg.model, dataset.num_classes, dataset.input_shape)
            except ValueError as e:
                raise NLBenchError(f"model {cfg.model!r} does not fit dataset {cfg.dataset!r}: {e}") from None
        net = net.to(dev)
        if dev.type == "cuda" and len(dataset.input_shape) == 3:
            net = net.to(memory_format=torch.channels_last)
        return net

    model = build_model(0)
    prep, autocast = make_prep(dataset, dev), autocast_factory(dev)
    if compile_model:  # compile the feature extractor: forward (head(features)) and the surrogate both use it
        model.features = torch.compile(model.features)
    steps_per_epoch = n // cfg.batch_size + (n % cfg.batch_size >= 2)  # a last batch of 1 breaks BatchNorm
    method_g = make_generator(dev, cfg.seed, 3)
    method.setup(MethodContext(model=model, meta_x=prep(seen.meta_x), meta_y=seen.meta_y, num_train=n,
                               num_classes=dataset.num_classes, batch_size=cfg.batch_size, device=dev,
                               generator=method_g, prep=prep, autocast=autocast,
                               train_x=train_set.x, train_y=train_set.y, epochs=cfg.epochs,
                               steps_per_epoch=steps_per_epoch,
                               noise_rate=nominal_rate(noisy.noise_report) if method.uses_noise_rate else None,
                               model_factory=build_model, eval_batch=EVAL_BATCH,
                               val_x=data.val_x, val_y=data.val_y, augment=cfg.augment))
    networks = method.networks()
    params = list(model.parameters()) + [p for net in networks for p in net.parameters()]

    def new_optimizer() -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    opt = new_optimizer()
    # A method of several stages trains the run's epochs once per stage (Method.stages): epochs are numbered on
    # through the stages, the schedule restarts at each boundary, and `final` summarises the last stage.
    stages = int(method.stages())
    if not 1 <= stages <= MAX_STAGES:
        raise NLBenchError(f"method {cfg.method!r} asks for {stages} stages; 1..{MAX_STAGES} are supported")
    total_epochs = stages * cfg.epochs
    shuffle_g, aug_g = make_generator(dev, cfg.seed, 2), make_generator(dev, cfg.seed, 4)
    is_noisy = train_set.is_noisy
    history: list[dict] = []
    status, error = "ok", None
    bar = ProgressBar(progress, total_epochs * steps_per_epoch, f"{cfg.method} {cfg.noise} s{cfg.seed}",
                      epochs=total_epochs)
    step, first_epoch, wall_before = 0, 1, 0.0
    generators = {"shuffle": shuffle_g, "augment": aug_g, "method": method_g}
    ckpt_file = None if checkpoint_dir is None else ckpt.checkpoint_path(checkpoint_dir, cfg.run_name())
    resumed_from = None
    # a checkpoint belongs to the config AND the method's version: one written before a method's fix must not
    # restore the old computation's state (an old constant, an old schedule) into a run recorded as the new one
    ckpt_identity = f"{cfg.hash()}:v{method.version}"
    if ckpt_file is not None and resume and (state := ckpt.load(ckpt_file, ckpt_identity, dev)) is not None:
        try:
            ckpt.restore_run(state, model=model, networks=networks, optimizer=opt, method=method,
                             generators=generators, view=view, device=dev)
            ckpt.check_progress(state, total_epochs)
            if state["history"]:  # the restored model must score what the history says it scored
                judged = method.eval_model(model)
                modes = [(m, m.training) for m in judged.modules()]
                with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
                    acc = evaluate(judged, data.test_x, data.test_y, prep, autocast)
                for m, mode in modes:  # the run goes on exactly as without this check
                    m.train(mode)
                if abs(acc - state["history"][-1]["test_acc"]) > 1.5 / max(1, len(data.test_y)):
                    raise ValueError(f"its model scores {acc:.4f} on the test split, its history says "
                                     f"{state['history'][-1]['test_acc']:.4f}")
        except Exception as e:  # a damaged or foreign checkpoint: drop it and start over with fresh state
            print(f"warning: checkpoint {ckpt_file} does not fit this run ({type(e).__name__}: {e}); "
                  "starting from epoch 1", file=sys.stderr)
            ckpt.remove(ckpt_file)
            return _train(cfg, data_root=data_root, device=device, results_dir=results_dir, progress=progress,
                          dataset=dataset, download=download, compile_model=compile_model,
                          checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, resume=resume)
        history, step, wall_before = list(state["history"]), int(state["step"]), float(state["wall_s"])
        first_epoch = resumed_from = len(history) + 1
    last_save = time.perf_counter()

    def save_checkpoint() -> None:
        ckpt.save(ckpt_file, ckpt.run_state(ckpt_identity, model=model, networks=networks, optimizer=opt,
                                            method=method, generators=generators, view=view, device=dev,
                                            history=history, step=step,
                                            wall_s=wall_before + time.perf_counter() - t_start))

    def snapshot(epoch: int) -> None:  # the feature view: eval mode, no grad, no RNG; training is unchanged
        if view is not None:
            view.snapshot(epoch, model, data.pool.x, data.meta_x, prep, autocast)

    try:
        if first_epoch == 1:
            snapshot(0)
        for epoch in range(first_epoch, total_epochs + 1):
            stage, in_stage = (epoch - 1) // cfg.epochs + 1, (epoch - 1) % cfg.epochs + 1
            for net in (model, *networks):
                net.train()
            t0 = time.perf_counter()
            if stage > 1 and in_stage == 1:  # a stage boundary (also when resuming from the end of the last stage)
                method.on_stage_start(stage, model)
                if not method.keep_optimizer_state:
                    opt = new_optimizer()
            method.on_epoch_start(epoch, model)
            own_steps = method.epoch_steps(epoch)
            n_steps = steps_per_epoch if own_steps is None else max(1, int(own_steps))
            perm = torch.randperm(n, device=dev, generator=shuffle_g)
            weights_seen = torch.full((n,), float("nan"), device=dev) if method.reweights else None
            loss_sum = torch.zeros((), device=dev)
            for i in range(n_steps):
                j = i % steps_per_epoch  # a method with epochs of its own length draws its own batches
                idx = perm[j * cfg.batch_size:(j + 1) * cfg.batch_size]
                xb = train_set.x[idx]
                if cfg.augment:
                    xb = random_crop_flip(xb, aug_g)
                if own_steps is not None:
                    lr = lr_at_progress(cfg, in_stage - 1 + i / n_steps)
                else:  # the first stage keeps the global step; a later one restarts the schedule
                    lr = lr_at(cfg, step if stage == 1 else (in_stage - 1) * steps_per_epoch + i, steps_per_epoch)
                for group in opt.param_groups:
                    group["lr"] = lr
                with autocast():
                    out = method.step(Batch(prep(xb), train_set.y[idx], idx, lr, step, epoch), model)
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                opt.step()
                loss_sum += out.loss.detach().float()
                if weights_seen is not None and out.weights is not None:
                    weights_seen[idx] = out.weights.detach().float()
                step += 1
                bar.advance()
            method.on_epoch_end(epoch, model)
            train_loss = loss_sum.item() / n_steps  # the one sync per epoch
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            epoch_time = time.perf_counter() - t0
            if not math.isfinite(train_loss):
                raise DivergenceError(f"non-finite training loss ({train_loss}) in epoch {epoch}", epoch)
            judged = method.eval_model(model)
            entry = {**method.epoch_log(), "epoch": epoch, "train_loss": train_loss, "lr": lr,
                     "epoch_time_s": epoch_time,
                     "test_acc": evaluate(judged, data.test_x, data.test_y, prep, autocast),
                     "val_acc": evaluate(judged, data.val_x, data.val_y, prep, autocast)}
            if method.reweights and dataset.true_labels:  # which samples are noisy needs the truth
                persistent = method.sample_weights()
                w = persistent if persistent is not None else weights_seen
                entry.update(weight_telemetry(w.detach().float().cpu().numpy(), is_noisy.cpu().numpy()))
            if stages > 1:
                entry["stage"] = stage
            history.append(entry)
            bar.epoch_done(epoch, train_loss, entry["test_acc"])
            snapshot(epoch)
            if (ckpt_file is not None and checkpoint_every is not None and epoch < total_epochs
                    and time.perf_counter() - last_save >= checkpoint_every):
                try:
                    save_checkpoint()
                except (NLBenchError, ckpt.UnsupportedState) as e:  # a checkpoint is insurance, never a failure
                    print(f"warning: no more checkpoints for this run: {e}", file=sys.stderr)
                    checkpoint_every = None
                last_save = time.perf_counter()
    except DivergenceError as e:
        status, error = "failed", {"reason": str(e), "epoch": e.epoch}
    finally:
        bar.close()

    # `final` summarises the last stage reached (all of a one-stage run), with its epochs counted within it
    accs = [h["test_acc"] for h in history[(len(history) - 1) // cfg.epochs * cfg.epochs:]] if history else []
    final = {}
    if accs:
        best = int(np.argmax(accs))
        final = {"last_acc": accs[-1], "best_acc": accs[best], "best_epoch": best + 1,
                 "last5_acc": float(np.mean(accs[-5:])), "epochs_done": len(accs)}
    record = {
        "schema": SCHEMA_VERSION, "run_name": cfg.run_name(), "config_hash": cfg.hash(),
        "method": cfg.method, "noise": cfg.noise, "dataset": cfg.dataset, "model": cfg.model,
        "seed": cfg.seed, "noise_seed": cfg.effective_noise_seed, "status": status, "oracle": method.oracle,
        "uses_noise_rate": method.uses_noise_rate, "uses_meta": method.uses_meta,
        "config": cfg.to_dict(), "method_options": method.options(), "method_version": method.version,
        "family_options": {k: v for k, v in method.family_defaults.get(noise_family(cfg.noise), {}).items()
                           if cfg.method_options.get(k) == v},
        "env": environment(dev), "dataset_info": dict(dataset.info),
        "noise_report": noisy.noise_report, "val_noise_report": noisy.val_noise_report,
        "sizes": {"pool": len(noisy.splits.pool), "meta": noisy.meta_size, "val": len(noisy.splits.val),
                  "test": len(dataset.y_test), "train": n},
        "history": history, "final": final,
        "wall_time_s": wall_before + time.perf_counter() - t_start,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if stages > 1:
        record["stages"] = stages
    if error:
        record["error"] = error
    if resumed_from is not None:
        record["resumed_from_epoch"] = resumed_from
    if view is not None:
        record["features"] = view.block()
    if results_dir is not None:
        record["path"] = str(write_record(results_dir, record))
        ckpt.remove(ckpt_file)
    return record
