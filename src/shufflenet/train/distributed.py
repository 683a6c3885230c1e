"""Distributed training helpers: torchrun setup, metric reductions and a batch norm synchronised across
ranks that also works on gloo (CPU), where torch's own ``nn.SyncBatchNorm`` refuses to run."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import multiprocessing
import os
import queue
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.autograd import Function

T = TypeVar("T")

_REDUCE_DIMS = (0, 2, 3)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job; ``backend`` is set only when a process group was created."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs and writes checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


# --- setup and teardown --------------------------------------------------------------------------------


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def _resolve_device(device: str | None, local_rank: int) -> torch.device:
    cuda = torch.cuda.is_available()
    if device is None:
        resolved = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    else:
        try:
            resolved = torch.device(device)
        except RuntimeError as error:
            raise ValueError(f"invalid device {device!r}: {error}") from None
        if resolved.type == "cuda" and not cuda:
            raise ValueError(f"device={device!r} was requested but CUDA is not available")
        if resolved.type == "cuda" and resolved.index is None:
            resolved = torch.device("cuda", local_rank)
    if resolved.type == "cuda" and resolved.index >= torch.cuda.device_count():
        raise ValueError(
            f"{resolved} does not exist: only {torch.cuda.device_count()} CUDA device(s) visible"
        )
    return resolved


def init_distributed(device: str | None = None) -> DistributedContext:
    """Read torchrun's RANK, WORLD_SIZE and LOCAL_RANK and, for more than one process, create the default
    process group (env:// rendezvous; NCCL on CUDA, gloo otherwise).

    ``device`` is "cpu", "cuda", "cuda:N" or None for CUDA when available; a bare "cuda" means the GPU
    numbered LOCAL_RANK.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(
            f"inconsistent environment: RANK={rank}, WORLD_SIZE={world_size}, LOCAL_RANK={local_rank}"
        )
    resolved = _resolve_device(device, local_rank)
    if world_size == 1:
        return DistributedContext(rank, world_size, local_rank, resolved, backend=None)

    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    backend = "nccl" if resolved.type == "cuda" else "gloo"
    if resolved.type == "cuda":
        # NCCL uses the current device for its communicators, so it must be ours before the group exists.
        torch.cuda.set_device(resolved)
    dist.init_process_group(backend)
    return DistributedContext(rank, world_size, local_rank, resolved, backend)


def cleanup_distributed(ctx: DistributedContext) -> None:
    """Destroy the process group created by :func:`init_distributed`, if any."""
    if ctx.backend is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_process_count(requested: int, device: str | None, global_batch: int) -> int:
    """How many local processes to train in: ``requested``, but at most one per CPU core and a count that
    divides ``global_batch``; 1 when the job already runs under torchrun or trains on CUDA, where one
    process per GPU is the rule."""
    if requested < 1:
        raise ValueError(f"cpu_processes must be 1 or more, got {requested}")
    if _env_int("WORLD_SIZE", 1) > 1 or _resolve_device(device, 0).type != "cpu":
        return 1
    processes = max(1, min(requested, os.cpu_count() or 1))
    while global_batch % processes:
        processes -= 1
    return processes


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    # A parent killed outright (SIGKILL) must not leave its workers training on, and writing checkpoints,
    # behind it: Linux ends them with it (prctl PR_SET_PDEATHSIG). Other systems have no such call; there
    # the workers run to the end of the job.
    with contextlib.suppress(AttributeError, OSError):
        ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).prctl(1, signal.SIGKILL)


def _local_worker(rank: int, world_size: int, port: int, threads: int, fn: Callable, args: tuple, results):
    _die_with_parent()
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(threads)
    try:
        results.put((rank, True, fn(*args)))
    except BaseException as error:  # KeyboardInterrupt too: the parent re-raises it
        results.put((rank, False, error))


def run_local_processes(fn: Callable[..., T], args: tuple, processes: int) -> T:
    """Run ``fn(*args)`` in ``processes`` local processes that form a gloo process group, as torchrun would,
    each with an equal share of the CPU threads; return rank 0's result or re-raise the first failure.

    For small networks on a few CPU cores, data parallelism over single-threaded processes outruns one
    process whose every small operator is split across threads (ShuffleNet V2 0.5x on Fashion-MNIST, 2
    cores: 31% more images/s). ``fn`` must be importable (the processes are spawned, not forked).
    """
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port, threads = _free_port(), max(1, (os.cpu_count() or 1) // processes)
    workers = [
        context.Process(target=_local_worker, args=(rank, processes, port, threads, fn, args, results))
        for rank in range(processes)
    ]
    for worker in workers:
        worker.start()
    outcomes: dict[int, tuple[bool, Any]] = {}
    stopped = False  # every worker has ended; what is still queued is read, then the loop ends
    try:
        while len(outcomes) < processes:
            try:
                rank, ok, value = results.get(timeout=0.5)
                outcomes[rank] = (ok, value)
                continue
            except queue.Empty:
                if stopped:
                    break
            except KeyboardInterrupt:
                continue  # Ctrl-C reached the workers too: wait for them to save and report
            dead = [w for rank, w in enumerate(workers) if rank not in outcomes and w.exitcode is not None]
            failed = any(not ok for ok, _ in outcomes.values())
            if dead or failed:
                # After a failure the others would wait forever in their next collective: give them a moment,
                # then stop them. An interrupt is not a failure: every rank stops at the same step, and rank 0
                # may still be writing the checkpoint.
                interrupted = all(isinstance(v, KeyboardInterrupt) for ok, v in outcomes.values() if not ok)
                grace = None if interrupted and not dead else 5
                for worker in workers:
                    worker.join(timeout=grace)
                    if worker.is_alive():
                        worker.terminate()
                stopped = True
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    failures = sorted((rank, value) for rank, (ok, value) in outcomes.items() if not ok)
    if failures:
        raise failures[0][1]
    missing = {rank: worker.exitcode for rank, worker in enumerate(workers) if rank not in outcomes}
    if missing:
        raise RuntimeError(f"a local training process died without reporting (exit code by rank: {missing})")
    return outcomes[0][1]


# --- metric reductions ---------------------------------------------------------------------------------


def all_reduce_mean(value: float | torch.Tensor, ctx: DistributedContext) -> float:
    """The mean of a scalar over ranks. Every rank weighs the same: for averages over unequal sample counts
    reduce (sum, count) with :func:`all_reduce_sum` instead."""
    if isinstance(value, torch.Tensor) and value.numel() != 1:
        raise ValueError(f"all_reduce_mean takes a scalar, got a tensor of shape {tuple(value.shape)}")
    if not ctx.enabled:
        return float(value)
    tensor = torch.tensor(float(value), dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor)
    return tensor.item() / ctx.world_size


def all_reduce_sum(tensor: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """The element-wise sum over ranks, as a new tensor on the input's device (the input is left as is)."""
    if not ctx.enabled:
        return tensor.detach().clone()
    # NCCL only reduces tensors on this rank's GPU.
    reduced = tensor.detach().to(ctx.device, copy=True)
    dist.all_reduce(reduced)
    return reduced.to(tensor.device)


def broadcast_object(obj: T, ctx: DistributedContext) -> T:
    """Rank 0's ``obj`` on every rank (pickled, so keep it small); other ranks' ``obj`` is ignored."""
    if not ctx.enabled:
        return obj
    holder: list[Any] = [obj if ctx.is_main else None]
    dist.broadcast_object_list(holder, src=0, device=ctx.device)
    return holder[0]


# --- synchronised batch norm ---------------------------------------------------------------------------


class _AllReduceSum(Function):
    """Differentiable all_reduce(SUM): the gradient of a sum over ranks is the sum of the ranks' gradients.

    The same as torch.distributed.nn.functional.all_reduce, which torch 2.14 deprecates (with a warning on
    every call) in favour of a private module; this keeps the batch norm on public, stable calls.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        reduced = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(reduced)
        return reduced

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        return _AllReduceSum.apply(grad_output)


def _synced_world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _per_channel(values: torch.Tensor) -> torch.Tensor:
    return values[None, :, None, None]


class CrossRankBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the batch of every rank in the default process group,
    on any backend (gloo included); gradients flow across ranks like a BN over the global batch.

    In eval mode, or without a process group of more than one rank, it is exactly ``nn.BatchNorm2d``.
    Every rank must call it the same number of times in the same order (each call is a collective).
    """

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d) -> CrossRankBatchNorm2d:
        """A CrossRankBatchNorm2d sharing ``bn``'s parameters and buffers (so optimisers stay valid)."""
        synced = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        synced.weight = bn.weight
        synced.bias = bn.bias
        synced.running_mean = bn.running_mean
        synced.running_var = bn.running_var
        synced.num_batches_tracked = bn.num_batches_tracked
        synced.train(bn.training)
        return synced

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not self.training or _synced_world_size() == 1:
            return super().forward(input)
        return self._synced_forward(input)

    def _synced_forward(self, input: torch.Tensor) -> torch.Tensor:
        # Two passes (global mean, then the all-reduced sum of squares about it) rather than E[x²]-E[x]²:
        # no cancellation when |mean| >> std, without holding a float64 copy of the activation for
        # backward. It costs a second all_reduce of C values per layer. Sums accumulate in float64.
        compute_dtype = torch.promote_types(input.dtype, torch.float32)
        x = input.to(compute_dtype)
        local_count = torch.tensor([x.numel() // x.size(1)], dtype=torch.float64, device=x.device)
        totals = _AllReduceSum.apply(torch.cat([x.sum(dim=_REDUCE_DIMS, dtype=torch.float64), local_count]))
        count = totals[-1].item()
        if count <= 1:
            # Every rank sees the same count, so they all raise here and none is left waiting.
            raise ValueError(
                f"expected more than 1 value per channel when training, got {count:.0f} over all ranks"
            )
        mean = totals[:-1] / count
        centred = x - _per_channel(mean.to(compute_dtype))
        var = _AllReduceSum.apply(centred.square().sum(dim=_REDUCE_DIMS, dtype=torch.float64)) / count

        output = centred * _per_channel(torch.rsqrt(var + self.eps).to(compute_dtype))
        if self.affine:
            output = output * _per_channel(self.weight) + _per_channel(self.bias)
        self._update_running_stats(mean.detach(), var.detach() * (count / (count - 1)))
        return output.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        # Mirrors nn.BatchNorm2d: momentum=None means a cumulative average over the batches seen.
        if not self.track_running_stats or self.running_mean is None or self.running_var is None:
            return
        factor = 0.0 if self.momentum is None else self.momentum
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased_var.to(self.running_var.dtype), alpha=factor)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``model`` (in place; the root too, hence the return value) by a
    :class:`CrossRankBatchNorm2d` with the same parameters, buffers and settings, under the same name, so
    state_dict keys do not change."""
    if isinstance(model, nn.BatchNorm2d) and not isinstance(model, CrossRankBatchNorm2d):
        return CrossRankBatchNorm2d.from_batchnorm(model)
    for name, child in model.named_children():
        converted = convert_sync_batchnorm(child)
        if converted is not child:
            model.add_module(name, converted)
    return model


def sync_batchnorm(model: nn.Module, ctx: DistributedContext) -> nn.Module:
    """Synchronise ``model``'s batch norms across ranks: torch's fused ``nn.SyncBatchNorm`` on CUDA,
    :class:`CrossRankBatchNorm2d` elsewhere. Single-process runs get ``model`` back unchanged."""
    if not ctx.enabled:
        return model
    if ctx.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return convert_sync_batchnorm(model)
