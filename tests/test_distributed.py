import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import randomize_batchnorm
from shufflenet.registry import create_model
from shufflenet.train.distributed import (
    CrossRankBatchNorm2d,
    DistributedContext,
    all_reduce_mean,
    all_reduce_sum,
    broadcast_buffers,
    cleanup_distributed,
    convert_sync_batchnorm,
    init_distributed,
    local_process_count,
    run_local_processes,
    sync_batchnorm,
)

WORLD_SIZE = 2
BATCH = 8
# Rows of the batch each rank gets: an even split, then an uneven one to check that counts weigh the stats.
SPLITS = ((4, 4), (3, 5))


@pytest.fixture
def no_torchrun_env(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def test_init_distributed_single_process(no_torchrun_env):
    ctx = init_distributed()
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.backend) == (0, 1, 0, None)
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert ctx.device == expected
    assert ctx.is_main and not ctx.enabled
    assert init_distributed("cpu").device == torch.device("cpu")
    cleanup_distributed(ctx)  # nothing to destroy, must not fail


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_init_distributed_rejects_cuda_without_cuda(no_torchrun_env):
    with pytest.raises(ValueError, match="CUDA is not available"):
        init_distributed("cuda")


def test_init_distributed_rejects_bad_env(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        init_distributed("cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="inconsistent"):
        init_distributed("cpu")


def test_helpers_are_no_ops_in_a_single_process():
    ctx = DistributedContext(0, 1, 0, torch.device("cpu"), None)
    assert all_reduce_mean(torch.tensor(2.5), ctx) == 2.5
    tensor = torch.arange(3)
    summed = all_reduce_sum(tensor, ctx)
    assert torch.equal(summed, tensor) and summed is not tensor
    obj = {"a": 1}
    assert broadcast_object(obj, ctx) is obj


def test_convert_keeps_state_dict_and_outputs():
    model = randomize_batchnorm(create_model("shufflenet_v2_x0_5", num_classes=10))
    reference = {key: value.clone() for key, value in model.state_dict().items()}
    bn_count = sum(isinstance(module, nn.BatchNorm2d) for module in model.modules())
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    expected = model(x)

    converted = convert_sync_batchnorm(model)
    state = converted.state_dict()
    assert list(state) == list(reference)
    assert all(torch.equal(state[key], reference[key]) for key in reference)
    assert sum(isinstance(module, CrossRankBatchNorm2d) for module in converted.modules()) == bn_count
    assert not converted.training
    torch.testing.assert_close(converted(x), expected, rtol=0, atol=0)
    # Already synchronised layers are left alone.
    layers = [module for module in converted.modules() if isinstance(module, CrossRankBatchNorm2d)]
    assert [
        m for m in convert_sync_batchnorm(converted).modules() if isinstance(m, CrossRankBatchNorm2d)
    ] == layers


def test_sync_batchnorm_picks_implementation_by_device():
    def model():
        return nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))

    single = DistributedContext(0, 1, 0, torch.device("cpu"), None)
    assert type(sync_batchnorm(model(), single)[1]) is nn.BatchNorm2d
    cpu = DistributedContext(0, 2, 0, torch.device("cpu"), "gloo")
    assert type(sync_batchnorm(model(), cpu)[1]) is CrossRankBatchNorm2d
    cuda = DistributedContext(0, 2, 0, torch.device("cuda", 0), "nccl")
    assert type(sync_batchnorm(model(), cuda)[1]) is nn.SyncBatchNorm


@pytest.mark.parametrize("momentum", [0.1, None])
def test_single_process_matches_batchnorm(momentum):
    reference = randomize_batchnorm(nn.Sequential(nn.BatchNorm2d(5, momentum=momentum)))[0]
    synced = CrossRankBatchNorm2d.from_batchnorm(_copy_bn(reference))
    for _ in range(2):
        x = (torch.randn(4, 5, 3, 3) + 3).requires_grad_()
        x_synced = x.detach().clone().requires_grad_()
        out, out_synced = reference(x), synced(x_synced)
        torch.testing.assert_close(out_synced, out, rtol=0, atol=0)
        (out * out).sum().backward()
        (out_synced * out_synced).sum().backward()
        torch.testing.assert_close(x_synced.grad, x.grad, rtol=0, atol=0)
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(synced.state_dict()[name], value, rtol=0, atol=0)
    reference.eval()
    synced.eval()
    x = torch.randn(2, 5, 3, 3)
    torch.testing.assert_close(synced(x), reference(x), rtol=0, atol=0)


def _copy_bn(bn: nn.BatchNorm2d) -> nn.BatchNorm2d:
    copy = nn.BatchNorm2d(bn.num_features, bn.eps, bn.momentum)
    copy.load_state_dict(bn.state_dict())
    return copy


# --- two gloo processes against one process over the whole batch ------------------------------------------


def _net(bn: type[nn.BatchNorm2d]) -> nn.Sequential:
    """conv -> BN -> ReLU -> conv -> BN (cumulative average) -> ReLU, identically initialised everywhere."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        bn(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        bn(6, momentum=None),
        nn.ReLU(),
    )
    with torch.no_grad():
        for index in (1, 4):
            net[index].weight.uniform_(0.5, 1.5)
            net[index].bias.normal_(0, 0.1)
    return net


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1234)
    # An offset mean makes the variance computation earn its keep.
    x = torch.randn(BATCH, 3, 5, 5, generator=generator) * 2 + 5
    loss_weights = torch.rand(BATCH, 6, 5, 5, generator=generator)
    return x, loss_weights


def _step(net: nn.Sequential, x: torch.Tensor, loss_weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """One forward/backward with a weighted mean over the GLOBAL batch: the per-rank losses add up to the
    single-process loss, so per-rank parameter gradients add up to the single-process ones."""
    net.zero_grad()
    x = x.clone().requires_grad_()
    out = net(x)
    loss = (out * loss_weights).sum() / (BATCH * loss_weights[0].numel())
    loss.backward()
    result = {"output": out.detach(), "input_grad": x.grad}
    result.update({f"grad.{name}": param.grad for name, param in net.named_parameters()})
    result.update({f"state.{name}": value.clone() for name, value in net.state_dict().items()})
    return result


def broadcast_object(obj, ctx: DistributedContext):
    """Rank 0's ``obj`` on every rank: the process group carries objects as well as tensors."""
    if not ctx.enabled:
        return obj
    holder = [obj if ctx.is_main else None]
    torch.distributed.broadcast_object_list(holder, src=0, device=ctx.device)
    return holder[0]


def _worker(out_dir: str) -> None:
    ctx = init_distributed("cpu")
    rank = ctx.rank
    try:
        x, loss_weights = _data()
        results = {}
        for split in SPLITS:
            start = sum(split[:rank])
            rows = slice(start, start + split[rank])
            results[split] = _step(_net(CrossRankBatchNorm2d), x[rows], loss_weights[rows])
        results["helpers"] = {
            "mean": all_reduce_mean(float(rank), ctx),
            "sum": all_reduce_sum(torch.tensor([rank + 1, 10]), ctx),
            "broadcast": broadcast_object({"from": rank}, ctx),
        }
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        cleanup_distributed(ctx)


@pytest.mark.slow
def test_cross_rank_batchnorm_matches_global_batchnorm(tmp_path):
    run_local_processes(_worker, (str(tmp_path),), WORLD_SIZE)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]

    x, loss_weights = _data()
    for split in SPLITS:
        expected = _step(_net(nn.BatchNorm2d), x, loss_weights)
        per_rank = [results[split] for results in ranks]
        for key in ("output", "input_grad"):
            torch.testing.assert_close(
                torch.cat([r[key] for r in per_rank]), expected[key], rtol=0, atol=1e-5
            )
        for key in (k for k in expected if k.startswith("grad.")):
            # DDP averages instead, which gives the same gradients for the usual per-rank loss (the local
            # mean, world_size times this one).
            torch.testing.assert_close(sum(r[key] for r in per_rank), expected[key], rtol=0, atol=1e-5)
        for key in (k for k in expected if k.startswith("state.")):
            for results in per_rank:
                torch.testing.assert_close(results[key], expected[key], rtol=0, atol=1e-5)

    for rank, results in enumerate(ranks):
        helpers = results["helpers"]
        assert helpers["mean"] == 0.5
        assert torch.equal(helpers["sum"], torch.tensor([3, 20]))
        assert helpers["broadcast"] == {"from": 0}, rank


def _rank_report(tag: str) -> dict:
    ctx = init_distributed("cpu")
    try:
        total = all_reduce_sum(torch.tensor([ctx.rank + 1.0]), ctx)
        return {"tag": tag, "rank": ctx.rank, "world": ctx.world_size, "sum": total.item(),
                "threads": torch.get_num_threads()}  # fmt: skip
    finally:
        cleanup_distributed(ctx)


def _fail_on_rank_one() -> str:
    if os.environ["RANK"] == "1":
        raise ValueError("rank one failed")
    return "rank zero"


def _die_on_rank_one() -> str:
    if os.environ["RANK"] == "1":
        os._exit(3)
    return "rank zero"


@pytest.mark.slow
def test_local_processes_form_a_group_and_return_rank_zeros_result(no_torchrun_env):
    report = run_local_processes(_rank_report, ("x",), 2)
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert report == {"tag": "x", "rank": 0, "world": 2, "sum": 3.0, "threads": threads}


@pytest.mark.slow
def test_local_processes_reraise_a_failure_or_a_silent_death(no_torchrun_env):
    with pytest.raises(ValueError, match="rank one failed"):
        run_local_processes(_fail_on_rank_one, (), 2)
    with pytest.raises(RuntimeError, match=r"died without reporting .*\{1: 3\}"):
        run_local_processes(_die_on_rank_one, (), 2)


def test_local_process_count(no_torchrun_env, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert local_process_count(1, "cpu", 128) == 1
    assert local_process_count(2, "cpu", 128) == 2
    assert local_process_count(8, "cpu", 128) == 4, "at most one process per core"
    assert local_process_count(4, "cpu", 6) == 3, "a count that splits the batch evenly"
    assert local_process_count(2, "cpu", 5) == 1
    with pytest.raises(ValueError, match="cpu_processes must be 1 or more"):
        local_process_count(0, "cpu", 128)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert local_process_count(2, "cpu", 128) == 1, "under torchrun the processes already exist"


DRIVER = """
import os, sys, time
from pathlib import Path
from shufflenet.train.distributed import run_local_processes

def sleeper(folder):
    Path(folder, f"{os.environ['RANK']}.pid").write_text(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    run_local_processes(sleeper, (sys.argv[1],), 2)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
def test_local_processes_die_with_a_killed_parent(tmp_path, no_torchrun_env):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    parent = subprocess.Popen([sys.executable, str(driver), str(tmp_path)])
    pid_files = [tmp_path / "0.pid", tmp_path / "1.pid"]
    deadline = time.monotonic() + 60
    while not all(f.exists() and f.read_text() for f in pid_files) and time.monotonic() < deadline:
        time.sleep(0.1)
    children = [int(f.read_text()) for f in pid_files]
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in children), "workers outlived their killed parent"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purpose.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def _buffers_worker() -> list[float]:
    ctx = init_distributed("cpu")
    try:
        bn = nn.BatchNorm2d(2)
        bn.running_mean.fill_(float(ctx.rank + 1))  # each rank's own statistics, as after its last step
        broadcast_buffers(bn, ctx)
        return all_reduce_sum(bn.running_mean.clone(), ctx).tolist()
    finally:
        cleanup_distributed(ctx)


@pytest.mark.slow
def test_evaluation_uses_rank_zeros_batchnorm_statistics_on_every_rank():
    # Rank 0's running mean (1.0) on both ranks sums to 2.0; without the broadcast it would be 1 + 2 = 3.
    assert run_local_processes(_buffers_worker, (), WORLD_SIZE) == [2.0, 2.0]


def test_a_rendezvous_left_open_by_a_signal_is_shut_down_and_freed():
    """torch's launcher keeps its rendezvous (a TCP store served by a C++ thread) open when a signal stops
    it, referenced only from the frames of the exception; release_rendezvous shuts it down and lets it go
    at once rather than at interpreter exit."""
    import weakref

    from shufflenet.train.distributed import release_rendezvous

    shut_down: list[bool] = []

    class Handler:
        def shutdown(self) -> None:
            shut_down.append(True)

    class Spec:
        def __init__(self) -> None:
            self.rdzv_handler = Handler()

    def launch_agent() -> None:
        spec = Spec()  # as torch's launch_agent holds it
        assert spec.rdzv_handler is not None
        raise KeyboardInterrupt  # stands in for the launcher's SignalException

    try:
        launch_agent()
    except KeyboardInterrupt as stop:
        frames = stop.__traceback__.tb_next.tb_frame
        handler = weakref.ref(frames.f_locals["spec"].rdzv_handler)
        del frames
        assert handler() is not None
        release_rendezvous(stop)
    assert shut_down == [True]
    assert handler() is None


WORKER_THAT_RAISES = """
import atexit, sys
from shufflenet.train.distributed import _local_worker

atexit.register(lambda: print("the interpreter's shutdown ran", file=sys.stderr))

def fails():
    import multiprocessing
    lock = multiprocessing.get_context("spawn").Lock()  # tracked: reported if leaked, as in a worker
    raise ValueError("stopped at step 4")

_local_worker(1, sys.argv[1], fails, ())
print("after the worker", flush=True)
"""


def test_a_local_worker_that_raised_leaves_its_exception_and_exits_straight_away(tmp_path):
    """The exception goes to the parent through a file; then the process ends at once with status 1 (no
    interpreter shutdown, where a process group's C++ thread stopped mid-run could abort it), quietly: no
    code after it runs and multiprocessing reports nothing leaked."""
    import pickle

    script = tmp_path / "worker.py"
    script.write_text(WORKER_THAT_RAISES)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        env={**os.environ, "RANK": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "after the worker" not in result.stdout
    assert "shutdown ran" not in result.stderr and "leaked" not in result.stderr, result.stderr
    error = pickle.loads((tmp_path / "rank1.pickle").read_bytes())
    assert isinstance(error, ValueError) and str(error) == "stopped at step 4"
