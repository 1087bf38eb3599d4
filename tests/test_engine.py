"""The training engine: exact resume after SIGKILL, 2 processes == 1, accumulation, NaN guard, checkpoints."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine_toy import ToyTask
from openblip3o.training.checkpoint import latest_checkpoint, load_checkpoint
from openblip3o.training.config import LoopConfig
from openblip3o.training.engine import TrainingAborted, train

TOY = str(Path(__file__).with_name("engine_toy.py"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_toy(out, steps, *extra, check=True):
    return subprocess.run([sys.executable, TOY, str(out), str(steps), *extra], env=ENV, capture_output=True, text=True,
                          check=check, timeout=300)


def losses(out):
    return [json.loads(line)["loss"] for line in (Path(out) / "log.jsonl").read_text().splitlines()]


def test_resume_after_sigkill_reproduces_the_uninterrupted_losses(tmp_path):
    run_toy(tmp_path / "straight", 40)
    process = subprocess.Popen([sys.executable, TOY, str(tmp_path / "killed"), "40", "--sleep", "0.05"], env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "killed" / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and len(log.read_text().splitlines()) >= 17):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "final.safetensors").exists(), "the run finished before it was killed"
    assert latest_checkpoint(tmp_path / "killed" / "checkpoints") is not None
    run_toy(tmp_path / "killed", 40)
    assert losses(tmp_path / "killed") == losses(tmp_path / "straight")  # exactly, step by step
    a, b = (load_file(str(tmp_path / d / "final.safetensors")) for d in ("straight", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    run_toy(tmp_path / "one", 12, "--noise", "0")
    subprocess.run(["torchrun", "--nproc_per_node", "2", TOY, str(tmp_path / "two"), "12", "--noise", "0"], env=ENV,
                   check=True, capture_output=True, timeout=300)
    a, b = (load_file(str(tmp_path / d / "final.safetensors")) for d in ("one", "two"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert losses(tmp_path / "one") == pytest.approx(losses(tmp_path / "two"), rel=1e-6)


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    run_toy(tmp_path / "full", 8, "--noise", "0", "--batch", "8")
    run_toy(tmp_path / "accum", 8, "--noise", "0", "--batch", "8", "--accum", "2")
    assert losses(tmp_path / "full") == pytest.approx(losses(tmp_path / "accum"), rel=1e-5)


def test_a_nan_step_is_skipped_and_too_many_abort(tmp_path):
    out = run_toy(tmp_path / "one_nan", 10, "--nan-at", "4").stdout
    assert "non-finite loss" in out and "done" in out
    task = ToyTask(nan_at=-1)
    task.loss = lambda batch, generator: (torch.tensor(float("nan"), requires_grad=True), {})
    with pytest.raises(TrainingAborted, match="3 non-finite steps in a row"):
        train(task, LoopConfig(steps=10, batch_size=4, max_bad_steps=3, log_every=1), tmp_path / "all_nan", progress=False)


def test_checkpoint_holds_the_trained_weights_and_the_loop_state(tmp_path):
    task = ToyTask()
    summary = train(task, LoopConfig(steps=6, batch_size=4, checkpoint_every=3, log_every=1), tmp_path, progress=False)
    saved = load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))
    assert saved["state"]["step"] == 6 and summary["steps"] == 6
    fresh = ToyTask()
    fresh.net.load_state_dict({k.removeprefix("net."): v for k, v in saved["modules"].items()})
    assert all(torch.equal(a, b) for a, b in zip(fresh.net.state_dict().values(), task.net.state_dict().values()))
    assert {"state", "step"} <= set(saved["optimizer"]) | {"step"}
    assert len(list((tmp_path / "checkpoints").glob("step-*"))) == 2  # keep_checkpoints
    assert not list((tmp_path / "checkpoints").glob(".*tmp"))
