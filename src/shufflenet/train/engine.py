"""The training loop: the papers' recipes on real data, resumable to the sample, on one process or many.

Exact resume rests on three things: the checkpoint holds every piece of state (model, optimizer,
scheduler, scaler, EMA, RNG states, metrics, epoch, step and position in the epoch); batches are a pure
function of (seed, epoch, position) (see ``shufflenet.data.loaders``); and the RNG state is captured at a
step boundary and restored before the next step.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, Subset
from torchvision.transforms import v2
from tqdm import tqdm

from shufflenet.data import (
    AugmentedDataset,
    SmallImageDataset,
    build_dataset,
    build_eval_loader,
    build_train_loader,
    build_transforms,
    dataset_info,
    decode_image_folder,
    measure_normalization,
    steps_per_epoch,
)
from shufflenet.data.catalog import is_small
from shufflenet.ops import shift_parameters, shift_penalty, shift_sparsity, sparsity_table, total_sparsity
from shufflenet.profile import profile
from shufflenet.registry import create_model
from shufflenet.train.checkpoint import (
    atomic_write,
    capture_rng_state,
    export_weights,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from shufflenet.train.config import TrainConfig
from shufflenet.train.distributed import (
    DistributedContext,
    StoppedBySignal,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    cleanup_distributed,
    init_distributed,
    is_global_main,
    local_process_count,
    run_local_processes,
    sync_batchnorm,
)
from shufflenet.train.evaluate import EvalResult, autocast_for, evaluate_model
from shufflenet.train.metrics import (
    MetricsLog,
    TensorBoardWriter,
    plot_confusion_matrix,
    plot_learning_curves,
    summary_table,
)
from shufflenet.train.run_dir import CHECKPOINT_NAME, hold_run_directory
from shufflenet.train.sizing import (
    adapt_to_data,
    check_memory,
    class_count,
    memory_note,
    world_size,
)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite, or rose far above its starting value; the last good checkpoint is
    left as it was."""


# The loss's running mean (an exponential one over about ten steps) may rise to this multiple of the first
# step's loss, the untrained network's, before the run counts as diverged: training lowers the loss, and a
# learning rate too high for the data sends it to 8-50 where it started at 2.3.
DIVERGENCE_RATIO = 3.0
_RUNNING_MEAN_DECAY = 0.9
# Evaluating every epoch is cheap for a validation set this small, and gives learning curves, not a dot.
SMALL_VAL_SET = 5000


class TrainingInterrupted(StoppedBySignal):
    """Ctrl-C or SIGTERM: a checkpoint was written first, so ``--resume`` continues from here."""


def warmup_steps(config: TrainConfig, total_steps: int, steps_in_epoch: int) -> int:
    """Steps of linear warm-up: ``warmup_epochs``, but at least ``warmup_min_steps`` and at most
    ``warmup_max_fraction`` of the run; none when the recipe asks for none (the papers' schedules)."""
    if config.warmup_epochs <= 0:
        return 0
    asked = max(round(config.warmup_epochs * steps_in_epoch), config.warmup_min_steps)
    return max(1, min(asked, math.floor(config.warmup_max_fraction * total_steps)))


def lr_factor(config: TrainConfig, step: int, total_steps: int, steps_in_epoch: int) -> float:
    """The learning-rate multiplier at optimizer step ``step``: linear warm-up, then the schedule."""
    warmup = warmup_steps(config, total_steps, steps_in_epoch)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    epoch = step / steps_in_epoch
    if config.schedule == "linear":  # ShuffleNet V1/V2: linear decay to 0
        return max(0.0, 1.0 - progress)
    if config.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if config.schedule == "step":
        return config.gamma ** sum(epoch >= milestone for milestone in config.milestones)
    if config.schedule == "exponential":
        return config.gamma ** math.floor(epoch)
    return 1.0


def parameter_groups(model: nn.Module, weight_decay: float, decay_bn_and_bias: bool) -> list[dict]:
    """Weight decay on conv and FC weights; on BN parameters and biases too only if asked (the authors'
    release leaves them out). SSL displacements, if any, form a third group without weight decay: their
    regulariser is the shift penalty, and they can be frozen on their own (Chen et al. 2019, section 4.1).

    Each group is named ("decay", "no_decay", "shift"): the trainer picks its learning-rate factor by name."""
    shifts = {id(p) for p in shift_parameters(model)}
    decay, no_decay, shift = [], [], []
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        if id(parameter) in shifts:
            shift.append(parameter)
        else:
            (decay if parameter.ndim > 1 or decay_bn_and_bias else no_decay).append(parameter)
    groups = [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]
    if shift:
        groups.append({"name": "shift", "params": shift, "weight_decay": 0.0})
    return groups


class _FirstSamples(Subset):
    """The first ``count`` samples of ``base``. Unlike a plain Subset it carries ``skip_bad_images``, which
    the loaders read to drop unreadable images from batches."""

    def __init__(self, base: Dataset, count: int, skip_bad_images: bool) -> None:
        super().__init__(base, range(min(count, len(base))))
        self.skip_bad_images = skip_bad_images


@dataclass
class _Position:
    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    elapsed: float = 0.0  # training seconds before this process started (resumed runs)


class Trainer:
    """One training run; :func:`train` is the function to call."""

    def __init__(self, config: TrainConfig, ctx: DistributedContext, resume: str | Path | bool = False):
        self.config, self.ctx = config, ctx
        self.run_dir = config.run_dir()
        self.checkpoint_path = self.run_dir / CHECKPOINT_NAME
        self._seed_everything(config.seed)
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.amp = config.amp if ctx.device.type == "cuda" else "none"
        if config.amp != "none" and self.amp == "none":
            self._print(f"note: amp={config.amp} needs CUDA; training in float32 on {ctx.device}")

        # Data (built before the model: the order the RNG is drawn in is part of a run's result).
        self._setup_data()
        self.steps_in_epoch = steps_per_epoch(len(self.train_set), config.batch_size)
        self.total_steps = config.iterations or config.epochs * self.steps_in_epoch
        self.epochs = math.ceil(self.total_steps / self.steps_in_epoch)

        # Model and optimisation.
        self.model_args = {"num_classes": self.num_classes, "in_chans": self.in_chans, **config.model_args}
        self.dtype = torch.float64 if config.precision == "float64" else torch.float32
        self.model = self._create_model()  # the plain module: what checkpoints and exports hold
        self.optimizer = self._create_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_lambdas())
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == "fp16")
        self.ema = self._create_ema()
        self.runnable = self._runnable()  # what the training steps call: DDP and torch.compile wrap it

        # Progress, which a checkpoint restores.
        self.position = _Position()
        # Sums over the epoch: the optimized loss, plain cross-entropy (as val_loss), correct, seen.
        self.accumulators = torch.zeros(4, dtype=torch.float64, device=ctx.device)
        self.loss_watch = torch.full((2,), math.nan, dtype=torch.float64, device=ctx.device)  # first, mean
        self.metrics = MetricsLog()
        self.resumed_rng: dict | None = None  # a resumed checkpoint's RNG state, put back when run() starts
        if resume:
            self._resume(self.checkpoint_path if resume is True else Path(resume))

        # Set by run().
        self.stop_signal: int | None = None  # SIGINT or SIGTERM, once received: stop at the next step
        self.started: float | None = None  # time.monotonic() when this process started training
        self.tensorboard: TensorBoardWriter | None = None

    # --- set-up ------------------------------------------------------------------------------------------

    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _print(self, message: str) -> None:
        if self.ctx.is_main:
            tqdm.write(message)

    def _setup_data(self) -> None:
        """The training and evaluation sets and what the model and the input contract need of them:
        classes, image size, channels and normalization."""
        config = self.config
        info = dataset_info(config.dataset)
        train_base, val_base = self._load_split("train"), self._load_split("val")
        self.image_sources = (train_base, val_base)  # they record skipped unreadable images
        self.class_names = list(getattr(train_base, "classes", []))
        self.num_classes = info.num_classes or len(self.class_names)
        self.image_size, self.in_chans = config.image_size or info.image_size, info.channels
        self.normalization = {"mean": info.mean, "std": info.std}
        if config.dataset == "imagefolder":  # one's own images: their own statistics, not ImageNet's
            self.normalization = measure_normalization(train_base)
        self.train_set, self.val_set = self._datasets(train_base, val_base, info.image_size)

    def _load_split(self, split: str) -> Dataset:
        config = self.config
        # The transforms are applied by AugmentedDataset or SmallImageDataset, seeded per sample.
        return build_dataset(
            config.dataset,
            split,
            config.data_dir,
            transform=v2.Identity(),
            download=config.download,
            skip_bad_images=config.skip_bad_images,
        )

    def _datasets(self, train_base: Dataset, val_base: Dataset, native_size: int) -> tuple[Dataset, Dataset]:
        """The augmented training set and the evaluation set, each cut to its subset size if one is set."""
        config, size = self.config, self.image_size
        if config.dataset == "imagefolder" and is_small(size):
            # Small images of one's own: decoded once (a few MB), then trained like CIFAR.
            train_base, val_base = decode_image_folder(train_base, size), decode_image_folder(val_base, size)
            native_size = size
        if size == native_size and hasattr(train_base, "data"):
            # Fashion-MNIST and CIFAR at their own size: batched augmentation (see data.small_images).
            train_set = SmallImageDataset(
                train_base,
                padding=size // 8 if config.augment.startswith("crop-flip") else 0,
                flip=config.augment != "none",
                erase=config.augment == "crop-flip-erase",
                seed=config.seed,
                limit=config.train_subset,
            )
            return train_set, SmallImageDataset(val_base, padding=0, flip=False, limit=config.val_subset)
        if config.train_subset:
            train_base = _FirstSamples(train_base, config.train_subset, config.skip_bad_images)
        if config.val_subset:
            val_base = _FirstSamples(val_base, config.val_subset, config.skip_bad_images)
        train_transform = build_transforms(config.dataset, "train", image_size=size)
        val_transform = build_transforms(config.dataset, "val", image_size=size)
        return (
            AugmentedDataset(train_base, train_transform, seed=config.seed),
            AugmentedDataset(val_base, val_transform),
        )

    def _create_model(self) -> nn.Module:
        config = self.config
        model = create_model(config.model, **self.model_args).to(self.ctx.device, self.dtype)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if config.sync_bn:
            model = sync_batchnorm(model, self.ctx)
        return model

    def _create_optimizer(self) -> torch.optim.Optimizer:
        config = self.config
        lr = config.lr * (config.batch_size / config.lr_base_batch if config.lr_base_batch else 1.0)
        groups = parameter_groups(self.model, config.weight_decay, config.decay_bn_and_bias)
        if config.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, nesterov=config.nesterov)
        return torch.optim.AdamW(groups, lr=lr)

    def _lr_lambdas(self) -> list[Callable[[int], float]]:
        """The learning-rate factor of each of the optimizer's parameter groups, chosen by its name."""
        config = self.config

        def factor(step: int) -> float:
            return lr_factor(config, step, self.total_steps, self.steps_in_epoch)

        def shift_factor(step: int) -> float:
            # A zero learning rate freezes the displacements without touching requires_grad, which DDP
            # and resumed runs would not see the same way.
            frozen = config.freeze_shifts_epoch is not None and (
                step >= config.freeze_shifts_epoch * self.steps_in_epoch
            )
            return 0.0 if frozen else factor(step)

        by_name = {"decay": factor, "no_decay": factor, "shift": shift_factor}
        return [by_name[group["name"]] for group in self.optimizer.param_groups]

    def _create_ema(self) -> torch.optim.swa_utils.AveragedModel | None:
        if not self.config.ema_decay:
            return None
        return torch.optim.swa_utils.AveragedModel(
            self.model,
            multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(self.config.ema_decay),
            use_buffers=True,
        )

    def _runnable(self) -> nn.Module:
        ctx, runnable = self.ctx, self.model
        if ctx.enabled:
            device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            runnable = DistributedDataParallel(runnable, device_ids=device_ids)
        if self.config.compile:
            runnable = torch.compile(runnable)
        return runnable

    def _elapsed(self) -> float:
        """Training seconds so far, this process's and those of the runs it resumed."""
        since_start = time.monotonic() - self.started if self.started is not None else 0.0
        return self.position.elapsed + since_start

    # --- checkpoints -------------------------------------------------------------------------------------

    def _state(self, accumulators: torch.Tensor) -> dict[str, Any]:
        return {
            "format": 1,
            "config": self.config.to_dict(),
            "model_args_resolved": self.model_args,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": capture_rng_state(),
            "epoch": self.position.epoch,
            "batch_in_epoch": self.position.batch_in_epoch,
            "step": self.position.step,
            "total_steps": self.total_steps,  # for the "exists (step N of M)" refusal; resume recomputes it
            "elapsed": self._elapsed(),
            "accumulators": accumulators.cpu(),
            "loss_watch": self.loss_watch.cpu(),
            "metrics": self.metrics.state_dict(),
            # The input contract's mean/std: measured on the images for an ImageFolder of one's own.
            "normalization": {key: list(value) for key, value in self.normalization.items()},
        }

    def save(self) -> None:
        """Write the full training state (rank 0 only), atomically; never weights that overflowed."""
        # A step can overflow the weights, or BN's running statistics, while its own loss was still finite:
        # check before overwriting the last good checkpoint. The ranks' statistics can differ: they agree
        # first, so that every rank stops together.
        values = [value for value in self.model.state_dict().values() if value.is_floating_point()]
        overflowed = torch.stack([~value.isfinite().all() for value in values]).any().double().reshape(1)
        self._check_finite(math.inf if all_reduce_sum(overflowed, self.ctx).item() else 0.0, "a weight")
        # Each rank sums over its own share of the epoch: the checkpoint holds the sum over ranks.
        accumulators = all_reduce_sum(self.accumulators, self.ctx)
        if self.ctx.is_main:
            save_checkpoint(self.checkpoint_path, self._state(accumulators))

    def _resume(self, path: Path) -> None:
        if path.is_dir():
            path = path / CHECKPOINT_NAME
        state = load_checkpoint(path, map_location=self.ctx.device)
        saved = state["config"]
        if saved["model"] != self.config.model or state["model_args_resolved"] != self.model_args:
            raise ValueError(
                f"{path} was trained as {saved['model']} with {state['model_args_resolved']}, not "
                f"{self.config.model} with {self.model_args}; resume with the same model settings"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.metrics.load_state_dict(state["metrics"])
        if self.ctx.is_main:  # the sum over ranks: counted once, on rank 0
            accumulators = state["accumulators"]
            if len(accumulators) == 3:  # written before the plain cross-entropy was summed: the objective's
                accumulators = torch.cat([accumulators[:1], accumulators])
            self.accumulators = accumulators.to(self.ctx.device)
        if "loss_watch" in state:  # older checkpoints lack it: the divergence check stays off
            self.loss_watch = state["loss_watch"].to(self.ctx.device)
        self.position = _Position(state["epoch"], state["batch_in_epoch"], state["step"], state["elapsed"])
        self.resumed_rng = state["rng"]
        self._print(
            f"resumed from {path}: epoch {self.position.epoch + 1}, "
            f"step {self.position.step}/{self.total_steps}"
        )

    # --- the loop ----------------------------------------------------------------------------------------

    def _diverged(self, what: str) -> TrainingDiverged:
        """The error that stops a diverged run, with the fix in the same line."""
        kept = (
            f"the last good checkpoint {self.checkpoint_path} is kept"
            if self.checkpoint_path.exists()
            else "no checkpoint was written"
        )
        warmup = max(3.0, 2 * self.config.warmup_epochs)
        return TrainingDiverged(
            f"training diverged at epoch {self.position.epoch + 1}, step {self.position.step}: {what}; "
            f"stopped and {kept}; lower the learning rate, e.g. --lr {self.config.lr / 4:.3g}, or lengthen "
            f"the warm-up, e.g. --set warmup_epochs={warmup:g}"
        )

    def _check_finite(self, loss_value: float, what: str = "loss") -> None:
        if not math.isfinite(loss_value):
            start = self.loss_watch[0].item()
            if what == "loss" and math.isfinite(start):
                what = f"loss became {loss_value} ({start:.3g} at the start)"
            else:
                what = f"{what} became {loss_value}"
            raise self._diverged(what)

    def _check_diverging(self) -> None:
        """Stop once the loss's running mean is far above the first step's (and on NaN): a learning rate
        too high for the data, which would otherwise end at chance after wasting the whole run."""
        # The ranks' running means differ: they agree on the mean, so that every rank stops together.
        start, running = (all_reduce_sum(self.loss_watch, self.ctx) / self.ctx.world_size).tolist()
        if math.isnan(start):  # not recorded: a run resumed from an older checkpoint
            return
        self._check_finite(running)
        if running > DIVERGENCE_RATIO * start:
            raise self._diverged(f"loss {running:.3g} against {start:.3g} at the start")

    def _stop_now(self) -> bool:
        requested = self.stop_signal is not None
        if not self.ctx.enabled:
            return requested
        # Every rank must stop at the same step, or the others wait forever in the next all-reduce.
        flag = torch.tensor([float(requested)], device=self.ctx.device)
        return bool(all_reduce_sum(flag, self.ctx).item())

    def _prepare(self, dataset, batch) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets = dataset.to_device(batch, self.ctx.device, **self.normalization)
        images = images.to(self.dtype)
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, targets

    def _optimize(self, loss: torch.Tensor) -> None:
        """One optimizer step on ``loss``: gradients (scaled under fp16), the schedule, the EMA."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def _watch_loss(self, objective: torch.Tensor) -> None:
        """Keep the first step's loss (the untrained network's, whatever the learning rate: the reference)
        and a running mean, for the divergence check."""
        if self.position.step == 0:
            self.loss_watch.copy_(objective.expand(2))
        else:
            self.loss_watch[1].lerp_(objective, 1 - _RUNNING_MEAN_DECAY)

    def _train_step(self, batch) -> torch.Tensor:
        config, ctx = self.config, self.ctx
        images, targets = self._prepare(self.train_set, batch)
        with autocast_for(ctx.device, self.amp):
            logits = self.runnable(images)
            loss = nn.functional.cross_entropy(logits, targets, label_smoothing=config.label_smoothing)
            if config.shift_lambda:
                loss = loss + config.shift_lambda * shift_penalty(self.model, config.shift_norm)
        self._optimize(loss)
        with torch.no_grad():
            objective = loss.detach().double()
            # Without label smoothing or the shift penalty, the train loss is comparable with val_loss.
            plain = objective
            if config.label_smoothing or config.shift_lambda:
                plain = nn.functional.cross_entropy(logits.detach().double(), targets)
            seen = targets.numel()
            self.accumulators[0] += objective * seen
            self.accumulators[1] += plain * seen
            self.accumulators[2] += (logits.argmax(1) == targets).sum().double()
            self.accumulators[3] += seen
            self._watch_loss(objective)
        return loss.detach()

    def _run_epoch(self, epoch: int) -> float:
        """Train one epoch from the current position; returns images per second."""
        config, ctx = self.config, self.ctx
        skip = self.position.batch_in_epoch
        loader = build_train_loader(
            self.train_set,
            global_batch=config.batch_size,
            epoch=epoch,
            seed=config.seed,
            rank=ctx.rank,
            world_size=ctx.world_size,
            skip_batches=skip,
            num_workers=config.num_workers,
        )
        steps_this_epoch = min(self.steps_in_epoch, self.total_steps - (self.position.step - skip))
        bar = tqdm(
            total=steps_this_epoch,
            initial=skip,
            desc=f"epoch {epoch + 1}/{self.epochs}",
            unit="step",
            dynamic_ncols=True,
            disable=not (ctx.is_main and config.progress),
        )
        self.model.train()
        epoch_start, images_seen = time.monotonic(), 0
        window_loss, window_steps = torch.zeros((), device=ctx.device), 0
        for batch in loader:
            if self.position.step >= self.total_steps:
                break
            if batch is None:  # a whole batch of unreadable images, skipped
                continue
            window_loss += self._train_step(batch)
            window_steps += 1
            images_seen += len(batch[1]) * ctx.world_size
            self.position.step += 1
            self.position.batch_in_epoch += 1
            bar.update(1)
            at_log = self.position.step % config.log_every == 0
            at_checkpoint = config.checkpoint_every and self.position.step % config.checkpoint_every == 0
            if at_log or at_checkpoint:
                mean_loss = (window_loss / window_steps).item()
                self._check_finite(mean_loss)
                self._check_diverging()
                rate = images_seen / max(1e-9, time.monotonic() - epoch_start)
                remaining = (self.total_steps - self.position.step) * config.batch_size / max(rate, 1e-9)
                bar.set_postfix(
                    loss=f"{mean_loss:.4f}",
                    lr=f"{self.scheduler.get_last_lr()[0]:.4g}",
                    img_s=f"{rate:.0f}",
                    eta=time.strftime("%H:%M:%S", time.gmtime(remaining)),
                )
                window_loss.zero_()
                window_steps = 0
            if at_checkpoint:
                self.save()
            if self._stop_now():
                self.save()
                # A launcher stops every process as soon as one exits with an error: the others wait until
                # rank 0 has written the checkpoint.
                barrier(self.ctx)
                bar.close()
                signum = self.stop_signal or signal.SIGINT  # a rank stopped by the others got no signal
                by = " by SIGTERM" if signum == signal.SIGTERM else ""
                raise TrainingInterrupted(
                    f"interrupted{by} at epoch {epoch + 1}, step {self.position.step}; checkpoint saved to "
                    f"{self.checkpoint_path}; continue with --resume",
                    signum,
                )
        bar.close()
        return images_seen / max(1e-9, time.monotonic() - epoch_start)

    def _val_loader(self) -> Iterable:
        """This rank's share of the validation set, in order."""
        return build_eval_loader(
            self.val_set,
            batch_size=self.config.eval_batch_size or self.config.batch_size,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            num_workers=self.config.num_workers,
        )

    def _evaluate(self, model: nn.Module) -> EvalResult:
        # DDP hands rank 0's BN statistics to the others at the start of each forward, so after the last
        # step every other rank holds the statistics of one update before: evaluate them all with rank 0's,
        # the ones the checkpoint and the exported weights hold.
        broadcast_buffers(model, self.ctx)
        return evaluate_model(
            model,
            self._val_loader(),
            self.ctx,
            self.num_classes,
            amp=self.amp,
            prepare=lambda batch: self._prepare(self.val_set, batch),
        )

    def _eval_every(self) -> int:
        """Epochs between evaluations: the setting's, or by default every epoch for a small validation set
        and only the last for a large one."""
        if self.config.eval_every is not None:
            return self.config.eval_every
        return 1 if len(self.val_set) <= SMALL_VAL_SET else self.epochs

    def _train_row(self, sums: list[float]) -> dict[str, Any]:
        """The epoch's training metrics from the summed accumulators."""
        objective_sum, loss_sum, correct, seen = sums
        return {
            "train_loss": loss_sum / max(seen, 1),  # plain cross-entropy, as val_loss
            "train_objective": objective_sum / max(seen, 1),  # what was minimized: smoothing, shift penalty
            "train_top1_err": 100 * (1 - correct / max(seen, 1)),
        }

    def _validation_row(self) -> dict[str, Any]:
        """The validation metrics of the model (and of its EMA)."""
        result = self._evaluate(self.model)
        row = {"val_loss": result.loss, "val_top1_err": result.top1_err, "val_top5_err": result.top5_err}
        if self.ema is not None:
            ema_result = self._evaluate(self.ema.module)
            row.update(ema_val_top1_err=ema_result.top1_err, ema_val_top5_err=ema_result.top5_err)
        return row

    def _end_epoch(self, epoch: int, images_per_s: float) -> None:
        sums = all_reduce_sum(self.accumulators, self.ctx).tolist()
        self._check_finite(sums[0])
        self._check_diverging()
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": self.position.step,
            "lr": self.scheduler.get_last_lr()[0],
        }
        row.update(self._train_row(sums))
        last = self.position.step >= self.total_steps
        if (epoch + 1) % self._eval_every() == 0 or last:
            row.update(self._validation_row())
        sparsity = shift_sparsity(self.model)
        if sparsity:  # Chen et al. 2019, Table 1's last column: the share of channels no shift moves
            row["shift_sparsity"] = 100 * total_sparsity(sparsity).sparsity
        row.update(images_per_s=images_per_s, elapsed_s=self._elapsed())
        self.metrics.append(row)
        self.position.epoch = epoch + 1
        self.position.batch_in_epoch = 0
        self.accumulators.zero_()
        if self.ctx.is_main:
            self.metrics.write(self.run_dir)
            plot_learning_curves(self.metrics.rows, self.run_dir / "learning_curves.png")
            if self.tensorboard is not None:
                self.tensorboard.add_scalars(row, self.position.step)
            message = ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k != "step"
            )
            self._print(message)
        self.save()

    def _recalibrate_bn(self) -> None:
        """Re-estimate BN statistics with the final weights over a few training batches (cumulative
        average), which the EMA or the last high learning-rate steps may have left stale."""
        batches = self.config.bn_recalibration_batches
        model = self.ema.module if self.ema is not None else self.model
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
        loader = build_train_loader(
            self.train_set,
            global_batch=self.config.batch_size,
            epoch=self.epochs,
            seed=self.config.seed,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
        )
        model.train()
        with torch.no_grad():
            for index, batch in enumerate(loader):
                if index >= batches:
                    break
                model(self._prepare(self.train_set, batch)[0])
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum

    def _finish(self) -> dict[str, Any]:
        if self.config.bn_recalibration_batches:
            self._recalibrate_bn()
        final_model = self.ema.module if self.ema is not None else self.model
        result = self._evaluate(final_model)
        summary = {
            "model": self.config.model,
            "params": sum(p.numel() for p in self.model.parameters()),
            "mflops": profile(self.model, (self.image_size, self.image_size)).mflops,
            "top1_err": result.top1_err,
            "top5_err": result.top5_err,
            "time_s": self._elapsed(),
            "images_per_s": self.metrics.rows[-1].get("images_per_s") if self.metrics.rows else None,
            "dataset": self.config.dataset,
            "recipe": self.config.recipe,
            "epochs": self.epochs,
            "steps": self.position.step,
            "world_size": self.ctx.world_size,
            "threads_per_process": torch.get_num_threads(),
            "device": str(self.ctx.device),
            "per_class_accuracy": dict(
                zip(self.class_names or range(self.num_classes), result.per_class_accuracy(), strict=False)
            ),
            "run_dir": str(self.run_dir),
            "skipped_images": sorted({p for d in self.image_sources for p in getattr(d, "bad_images", [])}),
        }
        sparsity = shift_sparsity(final_model)
        if sparsity:
            summary["shift_sparsity"] = [asdict(row) for row in sparsity]
        if self.ctx.is_main:
            if sparsity:
                table = sparsity_table(sparsity) + "\n"
                atomic_write(self.run_dir / "shift_sparsity.md", lambda f: f.write(table.encode()))
            export_weights(
                final_model,
                self.run_dir / "model.safetensors",
                model_name=self.config.model,
                model_args=self.model_args,
                dataset=self.config.dataset,
                image_size=self.image_size,
                class_names=self.class_names,
                normalization=self.normalization,
            )
            names = self.class_names or [str(i) for i in range(self.num_classes)]
            plot_confusion_matrix(result.confusion.matrix.cpu(), names, self.run_dir / "confusion_matrix.png")
            text = json.dumps(summary, indent=2) + "\n"
            atomic_write(self.run_dir / "summary.json", lambda f: f.write(text.encode()))
            self._print("\n" + summary_table([summary]))
            if summary["skipped_images"]:
                self._print(f"skipped {len(summary['skipped_images'])} unreadable images (see summary.json)")
            self._print(f"\nrun directory: {self.run_dir} (checkpoint, metrics, plots, model.safetensors)")
        return summary

    def run(self) -> dict[str, Any]:
        """Train to the end of the recipe, then evaluate, export and summarize."""
        self.started = time.monotonic()
        self.tensorboard = TensorBoardWriter(self.run_dir / "tensorboard", enabled=self.ctx.is_main)
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.resumed_rng is not None:
            restore_rng_state(self.resumed_rng)
        # SIGTERM, which schedulers and `timeout` send, is asked to stop the same way as Ctrl-C.
        previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

        def request_stop(signum, frame):  # a second signal of the same kind acts at once
            self.stop_signal = signum
            signal.signal(signum, previous[signum])

        for signum in previous:
            signal.signal(signum, request_stop)
        try:
            for epoch in range(self.position.epoch, self.epochs):
                images_per_s = self._run_epoch(epoch)
                self._end_epoch(epoch, images_per_s)
            return self._finish()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.tensorboard.close()


def train(
    config: TrainConfig, *, resume: str | Path | bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Run ``config`` to the end (or continue the run in its directory with ``resume=True``, or from a
    checkpoint path) and return the summary: params, MFLOPs, top-1/top-5 error, time, images/s.

    The run directory is checked and locked first (see :mod:`shufflenet.train.run_dir`): an earlier run in
    it is refused unless ``resume`` continues it or ``overwrite`` replaces it, and so is a run in progress.

    On CPU, ``config.cpu_processes > 1`` trains data-parallel in that many local processes (see
    :func:`run_local_processes`); the global batch and the result are those of torchrun with as many."""
    # Decided here, in one process, before any worker starts: torchrun's rank 0, or the local processes'
    # parent, which holds the lock for them.
    guard = (
        hold_run_directory(config.run_dir(), resume=bool(resume), overwrite=overwrite)
        if is_global_main()
        else contextlib.nullcontext()
    )
    with sigterm_raises(), guard:
        config, announcement = adapt_to_data(config)
        if announcement and is_global_main():
            tqdm.write(announcement)
        processes = local_process_count(config.cpu_processes, config.device, config.batch_size)
        # Refused here rather than left to the kernel's out-of-memory killer, which ends a run unannounced.
        estimate, share = check_memory(config, max(processes, world_size()), class_count(config))
        if processes > 1:
            note = memory_note(estimate, share)
            return run_local_processes(train_in_this_process, (config, resume), processes, memory_note=note)
        return train_in_this_process(config, resume)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM before the trainer takes it over (while data and model are built) raises, where its default
    action would end the process at once, leaving the run directory locked."""

    def stop(signum: int, frame: Any) -> None:
        raise StoppedBySignal("stopped by SIGTERM before it could save a checkpoint", signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def train_in_this_process(
    config: TrainConfig, resume: str | Path | bool, trainer: type[Trainer] = Trainer
) -> dict[str, Any]:
    """``trainer`` on ``config`` in this process: alone, or as one rank of torchrun or the local processes."""
    ctx = init_distributed(config.device)
    try:
        return trainer(config, ctx, resume).run()
    finally:
        cleanup_distributed(ctx)
