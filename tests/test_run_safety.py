"""Run directories are safe to train into: an earlier run is never silently replaced, two runs never share a
directory, a bad --output is one line before anything is built, and SIGTERM checkpoints like Ctrl-C (in one
process and in local processes)."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import write_fake_fashion_mnist
from shufflenet.cli import main
from shufflenet.train import run_dir
from shufflenet.train.checkpoint import load_checkpoint, save_checkpoint
from shufflenet.train.run_dir import RunDirectoryError, hold_run_directory
from test_train import assert_resumed_run_equals, cli, train_args, write_driver


@pytest.fixture
def fashion_dir(tmp_path):
    directory = tmp_path / "fashion"
    write_fake_fashion_mnist(directory, n_train=96, n_test=32)
    return directory


def earlier_run(path, *, finished=False):
    """A run directory as a run interrupted at step 8 of 12 leaves it (or a finished one); returns its files'
    bytes, to check that a refusal leaves them as they were."""
    path.mkdir(parents=True)
    save_checkpoint(path / "checkpoint.pt", {"step": 12 if finished else 8, "total_steps": 12})
    (path / "metrics.json").write_text("[]\n")
    (path / "model.safetensors").write_bytes(b"old weights")
    (path / "notes.txt").write_text("the user's own file\n")
    if finished:
        (path / "summary.json").write_text(json.dumps({"steps": 12}))
    return {p.name: p.read_bytes() for p in path.iterdir()}


def run_train(capsys, fashion_dir, output, *flags):
    """``shufflenet train`` (one epoch) in this process; returns (exit status, stderr)."""
    status = main([*train_args(fashion_dir, output, "epochs=1"), *flags])
    return status, capsys.readouterr().err


def test_an_earlier_run_is_refused_and_left_untouched(fashion_dir, tmp_path, capsys):
    for finished, expected in [
        (False, "(step 8 of 12); --resume to continue, --output for a new run, or --overwrite"),
        (True, "(finished, step 12 of 12); --output for a new run, or --overwrite"),
    ]:
        output = tmp_path / f"run-{finished}"
        before = earlier_run(output, finished=finished)
        status, err = run_train(capsys, fashion_dir, output)
        assert status == 2
        assert err == f"shufflenet train: error: {output} exists {expected}\n"
        assert {p.name: p.read_bytes() for p in output.iterdir()} == before  # the lock is gone too


def test_resume_and_overwrite_together_are_refused(fashion_dir, tmp_path, capsys):
    status, err = run_train(capsys, fashion_dir, tmp_path / "run", "--resume", "--overwrite")
    assert status == 2 and "choose one" in err and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_overwrite_replaces_the_earlier_run(fashion_dir, tmp_path, capsys):
    output = tmp_path / "run"
    earlier_run(output)
    (output / "shift_sparsity.md").write_text("from the earlier run\n")
    status, err = run_train(capsys, fashion_dir, output, "--overwrite")
    assert status == 0, err
    assert load_checkpoint(output / "checkpoint.pt")["step"] == 6  # 96 samples, batch 16, 1 epoch
    assert (output / "summary.json").is_file() and len(json.loads((output / "metrics.json").read_text())) == 1
    assert (output / "model.safetensors").read_bytes() != b"old weights"
    assert not (output / "shift_sparsity.md").exists()  # nothing of the old run mixes with the new one
    assert (output / "notes.txt").is_file() and not (output / ".lock").exists()


def write_lock(path, pid, host=None):
    path.mkdir(parents=True, exist_ok=True)
    holder = {"pid": pid, "host": host or socket.gethostname(), "since": "2030-01-02 03:04:05+00:00"}
    (path / ".lock").write_text(json.dumps(holder))
    return holder


def test_a_run_in_progress_is_refused(fashion_dir, tmp_path, capsys):
    output = tmp_path / "run"
    write_lock(output, os.getppid())  # alive on this host: pytest's parent
    status, err = run_train(capsys, fashion_dir, output)
    assert status == 2
    assert err == (
        f"shufflenet train: error: {output} is in use by pid {os.getppid()} on host {socket.gethostname()} "
        "since 2030-01-02 03:04:05+00:00; wait for it or choose another --output\n"
    )
    assert json.loads((output / ".lock").read_text())["pid"] == os.getppid()  # the holder's lock stays
    # Another host's process cannot be checked from here: refused too, and the user is told what to delete.
    write_lock(output, 1, host="elsewhere.example")
    refused = pytest.raises(RunDirectoryError, match=r"on host elsewhere.example .* delete .*\.lock")
    with refused, hold_run_directory(output, resume=False, overwrite=False):
        pass


def test_a_stale_lock_is_taken_over_and_every_lock_released(tmp_path, capsys):
    output = tmp_path / "run"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_lock(output, dead.pid)
    with hold_run_directory(output, resume=False, overwrite=False):
        assert f"taking over {output / '.lock'}: pid {dead.pid}" in capsys.readouterr().err
        holder = json.loads((output / ".lock").read_text())
        assert (holder["pid"], holder["host"]) == (os.getpid(), socket.gethostname())
    assert not (output / ".lock").exists()
    # Ctrl-C, or any error: released all the same.
    with pytest.raises(KeyboardInterrupt), hold_run_directory(output, resume=False, overwrite=False):
        raise KeyboardInterrupt
    assert not (output / ".lock").exists()


def test_an_output_that_is_a_file_or_cannot_be_written(fashion_dir, tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("not a directory\n")
    status, err = run_train(capsys, fashion_dir, a_file)
    assert status == 2 and a_file.read_text() == "not a directory\n"
    assert (
        err == f"shufflenet train: error: {a_file} is a file, not a run directory; choose another --output\n"
    )
    status, err = run_train(capsys, fashion_dir, a_file / "run")
    assert status == 2 and err.startswith(f"shufflenet train: error: cannot create {a_file / 'run'}: ")
    # A read-only file system, simulated: root (as in containers) writes to folders chmod made read-only.
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(run_dir.os, "open", read_only)
    status, err = run_train(capsys, fashion_dir, tmp_path / "read-only")
    assert status == 2
    assert err == (
        f"shufflenet train: error: cannot write to {tmp_path / 'read-only'}: Read-only file system; "
        "choose another --output\n"
    )


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_output_folder(fashion_dir, tmp_path, capsys):
    output = tmp_path / "read-only"
    output.mkdir()
    output.chmod(0o555)
    try:
        status, err = run_train(capsys, fashion_dir, output)
    finally:
        output.chmod(0o755)
    assert status == 2 and err.startswith(f"shufflenet train: error: cannot write to {output}: ")


@pytest.mark.slow
def test_sigterm_checkpoints_and_resume_matches_an_uninterrupted_run(fashion_dir, tmp_path):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    cli(*train_args(fashion_dir, reference))
    stopped = cli(
        *train_args(fashion_dir, interrupted), driver=write_driver(tmp_path, 3, "SIGTERM"), check=False
    )
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    assert stopped.stderr.startswith(
        "shufflenet train: interrupted by SIGTERM at epoch 1, step 4; checkpoint saved"
    )
    assert "--resume" in stopped.stderr and "Traceback" not in stopped.stderr
    assert load_checkpoint(interrupted / "checkpoint.pt")["step"] == 4  # the step in flight, then the save
    assert not (interrupted / ".lock").exists()
    cli(*train_args(fashion_dir, interrupted), "--resume")
    assert_resumed_run_equals(interrupted, reference)


@pytest.mark.slow
def test_sigterm_reaches_local_processes_which_checkpoint(fashion_dir, tmp_path):
    output = tmp_path / "run"
    # Long enough to be still training when the signal comes; a checkpoint every 2 steps says it has begun.
    argv = train_args(
        fashion_dir, output, "cpu_processes=2", "epochs=200", "eval_every=200", "checkpoint_every=2"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen(
        [sys.executable, "-m", "shufflenet", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while (
            not (output / "checkpoint.pt").exists() and parent.poll() is None and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        assert json.loads((output / ".lock").read_text())["pid"] == parent.pid  # the parent holds it
        parent.send_signal(signal.SIGTERM)
        _, err = parent.communicate(timeout=120)
    finally:
        parent.kill()
    assert parent.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    assert err.startswith("shufflenet train: interrupted by SIGTERM at epoch ") and err.count("\n") == 1
    assert "checkpoint saved" in err and "--resume" in err
    assert load_checkpoint(output / "checkpoint.pt")["step"] >= 2 and not (output / ".lock").exists()


# Loaded at start-up by every interpreter with this folder on PYTHONPATH, the spawned training processes
# included: rank 0 kills the parent at the given step, and the parent-death signal takes the workers along.
KILL_PARENT_SITECUSTOMIZE = """
import os, signal
from shufflenet.train import engine
original = engine.Trainer._train_step

def step(self, *args):
    # The launcher sets RANK in a worker after start-up, so it is read here, at the step.
    if self.position.step == {kill_at} and os.environ.get("RANK") == "0":
        os.kill(os.getppid(), signal.SIGKILL)
        signal.pause()
    return original(self, *args)

engine.Trainer._train_step = step
"""


@pytest.mark.slow
def test_two_processes_killed_mid_epoch_resume_to_identical_metrics_and_weights(fashion_dir, tmp_path):
    two = ("cpu_processes=2",)
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    cli(*train_args(fashion_dir, reference, *two))
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_PARENT_SITECUSTOMIZE.format(kill_at=10))
    path = os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])
    # 6 steps per epoch; checkpoints at steps 4 and 8; everything killed at step 10, mid-epoch 2.
    killed = cli(*train_args(fashion_dir, interrupted, *two), env_extra={"PYTHONPATH": path}, check=False)
    assert killed.returncode == -signal.SIGKILL
    state = load_checkpoint(interrupted / "checkpoint.pt")
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (8, 1, 2)
    cli(*train_args(fashion_dir, interrupted, *two), "--resume")
    # The interrupted epoch's train loss and error too: the checkpoint holds the sums over both ranks.
    assert_resumed_run_equals(interrupted, reference)
