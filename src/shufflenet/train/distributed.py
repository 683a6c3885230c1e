"""Distributed training helpers: torchrun setup, metric reductions and a batch norm synchronised across
ranks that also works on gloo (CPU), where torch's own ``nn.SyncBatchNorm`` refuses to run."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import multiprocessing.util
import os
import pickle
import signal
import sys
import tempfile
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.autograd import Function

T = TypeVar("T")

_REDUCE_DIMS = (0, 2, 3)
# torch's launcher logs every stop and failure, the latter with a traceback of its own internals; the
# worker's own exception, re-raised by run_local_processes, says it once.
_LAUNCHER_LOGGERS = (
    "torch.distributed.elastic.agent.server.api",
    "torch.distributed.elastic.multiprocessing.api",
    "torch.multiprocessing.spawn",
)


class StoppedBySignal(KeyboardInterrupt):
    """A run stopped by a signal: Ctrl-C (SIGINT) or SIGTERM, which schedulers and ``timeout`` send. A shell
    reports a process killed by signal N as exit status 128 + N; ``signum`` lets the CLI exit the same way."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = int(signum)  # kept through pickling: the parent of local processes re-raises it


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


def is_global_main() -> bool:
    """True outside torchrun and on its global rank 0: the one process that owns the run directory."""
    return _env_int("RANK", 0) == 0


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


def die_with_parent() -> None:
    """End this process when its parent dies (Linux), rather than leave it training alone."""
    # A parent killed outright (SIGKILL) must not leave its workers training on, and writing checkpoints,
    # behind it: Linux ends them with it (prctl PR_SET_PDEATHSIG). torch's spawn sets SIGINT as that signal,
    # which the trainer takes as a request to checkpoint and stop, so it is replaced here. Other systems have
    # no such call; there the workers run to the end of the job.
    with contextlib.suppress(AttributeError, OSError):
        ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).prctl(1, signal.SIGKILL)


def _local_worker(threads: int, folder: str, fn: Callable, args: tuple) -> Any:
    die_with_parent()
    torch.set_num_threads(threads)
    try:
        return fn(*args)
    except BaseException as error:  # KeyboardInterrupt too: the parent re-raises it
        # The launcher only sees exit codes; the exception itself goes to the parent through a file.
        try:
            data = pickle.dumps(error)
        except Exception:
            data = pickle.dumps(RuntimeError(f"{type(error).__name__}: {error}"))
        path = os.path.join(folder, f"rank{os.environ['RANK']}.pickle")
        with open(path + ".part", "wb") as file:
            file.write(data)
        os.replace(path + ".part", path)
        # A non-zero exit: torch's spawn takes a KeyboardInterrupt for success, and the launcher would then
        # wait forever for a return value. Straight out, without the interpreter's shutdown: a process stopped
        # mid-run (SIGTERM) can hold a C++ thread of the process group that is still running then, and its
        # destruction aborted the process now and then ("terminate called without an active exception")
        # after everything (checkpoint, this exception) was saved.
        # multiprocessing's exit work first (it releases the semaphores this process registered).
        multiprocessing.util._exit_function()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def _worker_exception(folder: str) -> BaseException | None:
    """The exception that the lowest rank that raised one left in ``folder``, if any."""
    names = [n for n in os.listdir(folder) if n.startswith("rank") and n.endswith(".pickle")]
    if not names:
        return None
    with open(os.path.join(folder, min(names, key=lambda n: int(n[4:-7]))), "rb") as file:
        return pickle.load(file)


def describe_exit(rank: int, exitcode: int, memory_note: str = "") -> str:
    """What ``exitcode`` (negative: killed by that signal) likely means, for local process ``rank``."""
    if exitcode >= 0:
        return f"rank {rank} exited with code {exitcode}"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    if exitcode == -signal.SIGKILL:
        where = f" ({memory_note})" if memory_note else ""
        return f"rank {rank} was killed by SIGKILL, most likely the kernel's out-of-memory killer{where}"
    if exitcode == -signal.SIGTERM:
        # The launcher stops the other processes so when one fails.
        return f"rank {rank} was stopped by SIGTERM"
    return f"rank {rank} was killed by {name}"


def run_local_processes(fn: Callable[..., T], args: tuple, processes: int, *, memory_note: str = "") -> T:
    """Run ``fn(*args)`` in ``processes`` local processes that form a gloo process group, started by
    torch's elastic launcher as torchrun starts them, each with an equal share of the CPU threads; return
    rank 0's result or re-raise the exception of the lowest rank that raised one.

    For small networks on a few CPU cores, data parallelism over single-threaded processes outruns one
    process whose every small operator is split across threads (ShuffleNet V2 0.5x on Fashion-MNIST, 2
    cores: 31% more images/s). ``fn`` must be importable (the processes are spawned, not forked). Ctrl-C
    reaches the workers themselves (the trainer then checkpoints and stops, or finishes if no step is left)
    and this process waits for them. SIGTERM to this process is passed on to the workers by the launcher,
    which waits for them (30 s, then SIGKILL; TORCH_ELASTIC_SHUTDOWN_TIMEOUT changes it); their exception is
    re-raised, or :class:`StoppedBySignal` if they ended without one. Killing this process kills them.
    A process killed outright (SIGKILL, most often by the out-of-memory killer) is named with the signal,
    and with ``memory_note`` (the memory estimate) beside it. A worker whose ``fn`` raised ends at once
    after passing the exception on (``os._exit``): ``fn`` must have closed its own files; atexit handlers
    registered in the worker do not run.
    """
    # Imported here: builds without torch.distributed can still import this module and train in one process.
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    threads = max(1, (os.cpu_count() or 1) // processes)
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    quieted = [logger for logger in map(logging.getLogger, _LAUNCHER_LOGGERS) if not logger.disabled]
    with tempfile.TemporaryDirectory(prefix="shufflenet-workers-") as folder:
        config = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=processes,
            run_id=f"shufflenet-{uuid.uuid4().hex}",
            rdzv_backend="c10d",
            rdzv_endpoint="localhost:0",
            max_restarts=0,
            logs_specs=DefaultLogsSpecs(log_dir=folder),
            signals_to_handle="SIGTERM",  # passed on to the workers
        )
        # The launcher would take Ctrl-C for a shutdown (forward SIGINT, wait a while, SIGKILL), but a worker
        # past its last step finishes instead, then waits for the launcher to collect its result. So the
        # workers get Ctrl-C from the terminal (they share this process's group) and this process ignores it.
        signal.signal(signal.SIGINT, lambda signum, frame: None)
        for logger in quieted:
            logger.disabled = True
        try:
            return elastic_launch(config, _local_worker)(threads, folder, fn, args)[0]
        except SignalException as stop:
            with contextlib.suppress(Exception):  # tidying up must not hide why the run stopped
                release_rendezvous(stop)
            # A worker stopped before it could handle the signal (still starting, say) leaves no exception.
            stopped = StoppedBySignal(
                f"stopped by {stop.sigval.name} before the training processes saved a checkpoint", stop.sigval
            )
            raise (_worker_exception(folder) or stopped) from None
        except ChildFailedError as failure:
            codes = {rank: process.exitcode for rank, process in sorted(failure.failures.items())}
            exits = "; ".join(describe_exit(rank, code, memory_note) for rank, code in codes.items())
            died = RuntimeError(
                f"a local training process died without reporting (exit code by rank: {codes}): {exits}"
            )
            reported = _worker_exception(folder)
            # A process killed outright is the cause: the others were only stopped because of it.
            killed = any(code < 0 and -code not in (signal.SIGTERM, signal.SIGINT) for code in codes.values())
            if reported is not None and killed:
                died = RuntimeError(f"{died}; then: {reported}")
            raise (died if killed or reported is None else reported) from None
        finally:
            for signum, handler in handlers.items():  # the launcher leaves its own SIGTERM handler installed
                signal.signal(signum, handler)
            for logger in quieted:
                logger.disabled = False


def release_rendezvous(stopped: BaseException) -> None:
    """Close the rendezvous that torch's launcher leaves open when a signal stops it (it keeps it for a
    restart), referenced only from the frames of ``stopped``'s traceback, so that its TCP store's server
    thread (C++) ends here rather than live on into the interpreter's shutdown."""
    step = stopped.__traceback__.tb_next if stopped.__traceback__ else None  # past the caller's frame
    while step is not None:
        variables = step.tb_frame.f_locals
        handler = getattr(variables.get("spec"), "rdzv_handler", None)
        if handler is not None:
            with contextlib.suppress(Exception):  # a rendezvous already closed or never joined
                handler.shutdown()
        # Every frame past the caller's has returned; before Python 3.13 f_locals is a dict copy of its
        # variables that outlives frame.clear() and keeps the launcher (and the rendezvous) alive (3.13's
        # proxy keeps nothing; a module's frame gives its globals, left alone).
        if type(variables) is dict and variables is not step.tb_frame.f_globals:
            variables.clear()
        step = step.tb_next
    handler = variables = None
    traceback.clear_frames(stopped.__traceback__)
    gc.collect()


# --- metric reductions ---------------------------------------------------------------------------------


def barrier(ctx: DistributedContext) -> None:
    """Return once every rank has called this; at once in a single process."""
    if ctx.enabled:
        # An all-reduce rather than dist.barrier, which on NCCL has to guess this rank's GPU.
        all_reduce_sum(torch.zeros(1, device=ctx.device), ctx)


def broadcast_buffers(model: nn.Module, ctx: DistributedContext) -> None:
    """Give every rank rank 0's buffers of ``model`` (BN running statistics), in place."""
    if ctx.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


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


def gather_objects(value: Any, ctx: DistributedContext) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank; ``[value]`` in one process."""
    if not ctx.enabled:
        return [value]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def all_reduce_sum(tensor: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """The element-wise sum over ranks, as a new tensor on the input's device (the input is left as is)."""
    if not ctx.enabled:
        return tensor.detach().clone()
    # NCCL only reduces tensors on this rank's GPU.
    reduced = tensor.detach().to(ctx.device, copy=True)
    dist.all_reduce(reduced)
    return reduced.to(tensor.device)


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
