"""A small deterministic task for the engine tests, runnable as a script (one or several processes).

    python tests/engine_toy.py OUT_DIR STEPS [--checkpoint-every N] [--sleep S] [--accum A] [--nan-at STEP]
"""

import argparse
import sys
import time

import torch
from torch import nn

from openblip3o.training.config import LoopConfig
from openblip3o.training.engine import train

FEATURES = 8


class ToyTask:
    """Regress a fixed random linear map with a small MLP; example i is a pure function of i."""

    name = "toy"

    def __init__(self, sleep: float = 0.0, nan_at: int = -1, noise: float = 0.01):
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(FEATURES, 32), nn.Tanh(), nn.Linear(32, FEATURES))
        self.target = torch.randn(FEATURES, FEATURES, generator=torch.Generator().manual_seed(1))
        self.sleep, self.nan_at, self.noise, self.calls = sleep, nan_at, noise, 0

    def modules(self):
        return {"net": self.net}

    def batch(self, start, size):
        rows = [torch.randn(FEATURES, generator=torch.Generator().manual_seed(10_000 + i)) for i in range(start, start + size)]
        return torch.stack(rows)

    def loss(self, batch, generator):
        if self.sleep:
            time.sleep(self.sleep)
        noise = self.noise * torch.randn(batch.shape, generator=generator)  # exercises the per-step generator
        loss = ((self.net(batch + noise) - batch @ self.target) ** 2).mean()
        self.calls += 1
        if self.calls - 1 == self.nan_at:
            loss = loss * float("nan")
        return loss, {"mse": loss.item()}


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("steps", type=int)
    parser.add_argument("--checkpoint-every", type=int, default=5)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--nan-at", type=int, default=-1)
    parser.add_argument("--noise", type=float, default=0.01, help="0 makes the loss independent of the process count")
    args = parser.parse_args(argv)
    task = ToyTask(args.sleep, args.nan_at, args.noise)
    loop = LoopConfig(steps=args.steps, batch_size=args.batch, grad_accum=args.accum, lr=1e-2, warmup_steps=3,
                      log_every=1, checkpoint_every=args.checkpoint_every, ema_decay=0.9, max_bad_steps=3)
    summary = train(task, loop, args.out, progress=False)
    from safetensors.torch import save_file

    save_file(task.net.state_dict(), f"{args.out}/final.safetensors")
    print("done", summary["final_loss"])
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():  # left to interpreter exit, gloo's teardown sometimes aborts
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
