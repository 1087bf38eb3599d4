"""End-to-end text-to-image latency (batch 1) and throughput (batch 16) of a full BLIP3-o preset at 1024 px, by
stage (backbone, DiT, decoder), with peak memory; each speed lever can be switched, or all swept on/off.

    python bench/fullscale_infer.py --preset blip3o-8b [--batch-sizes 1,16] [--sweep] [--json]
    python bench/fullscale_infer.py --tiny --batch-sizes 1,2 --repeats 1     # same code path, tiny sizes, CPU

Random weights at the real sizes, built on the accelerator in bf16 (no fp32 copy, nothing full-size on the host):
cost does not depend on the weights. Stage 1: the prompt (random ids, --seq-len tokens incl. the 64 queries) through
Qwen2.5-VL once per batch (the DiT's unconditional branch is the zero condition); stage 2: the DiT samples 8x8 x 1792
tokens (--steps, CFG --guidance); stage 3: the decoder UNet samples 128x128x4 latents (--decoder-steps, CFG against
the cached empty-prompt features) and the VAE decodes them. Every stage is the shipped code: `Backbone.condition`
on the ids, `FlowMatching.sample` for the DiT, `DiffusionDecoder.decode` for the decoder; the levers are their options:

  --attention sdpa|eager   Qwen's attention and the UNet/VAE processors (Lumina's processor is SDPA-only)
  --compile                torch.compile (Module.compile) of the DiT and the UNet
  --no-batched-cfg         conditional and unconditional branches as two passes instead of one batch of 2B
  --cfg-fraction F         guidance on the first F of the steps only, conditional branch alone afterwards
  --solver euler|dpm       FlowMatchEuler (as trained) or DPMSolverMultistep (2nd order, flow sigmas) for both
  --offload                model CPU offload: each stage moves to the GPU for its turn only
  --vae-slicing            diffusers' VAE slicing: latents decoded one image at a time (VAE memory at 1024 px)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import dataclass, fields, replace

import torch
from diffusers.models.attention_processor import AttnProcessor
from fullscale_setup import (
    bench_config,
    build_backbone,
    build_decoder,
    build_generator,
    generator_channels,
    peak_memory_gb,
    pick_device,
    random_prompt_ids,
    sync,
)

from openblip3o.objectives import FlowMatching

DEFAULT_SEQ_LEN = 160  # chat template (~30) + a GenEval/DPG prompt (~60) + [IMG] + 64 queries
HOST = torch.device("cpu")


@dataclass
class Levers:
    attention: str = "sdpa"
    compile: bool = False
    batched_cfg: bool = True
    cfg_fraction: float = 1.0
    solver: str = "euler"
    steps: int = 30
    decoder_steps: int = 50
    offload: bool = False
    vae_slicing: bool = False


# Each lever's alternative setting for --sweep (decoder steps drop with the better solver, as the flag advertises).
SWEEP = {
    "attention": {"attention": "eager"},
    "compile": {"compile": True},
    "batched_cfg": {"batched_cfg": False},
    "cfg_fraction": {"cfg_fraction": 0.5},
    "solver": {"solver": "dpm", "steps": 15, "decoder_steps": 20},
    "offload": {"offload": True},
    "vae_slicing": {"vae_slicing": True},
}


class Models:
    """The three inference stages, the shipped classes; with offload each lives on the host until its turn."""

    def __init__(self, config, device, levers: Levers):
        self.device, self.levers = device, levers
        home = HOST if levers.offload else device
        dtype = torch.bfloat16
        self.backbone = build_backbone(config, home, dtype, levers.attention)
        self.generator = build_generator(config, home, self.backbone.condition_dim).to(home, dtype).eval()
        self.decoder = build_decoder(config, home, dtype)
        self.token_shape = (generator_channels(config), config.target.grid_size, config.target.grid_size)
        self.dit_objective = FlowMatching(config.objective)
        if levers.attention == "eager":
            self.decoder.unet.set_attn_processor(AttnProcessor())
            self.decoder.vae.set_attn_processor(AttnProcessor())
        if levers.vae_slicing:
            self.decoder.vae.enable_slicing()
        if levers.compile:
            self.generator.dit.compile()
            self.decoder.unet.compile()

    def sampler_options(self) -> dict:
        """The levers that are options of `FlowMatching.sample`."""
        return {"solver": self.levers.solver, "guided_fraction": self.levers.cfg_fraction,
                "batched_guidance": self.levers.batched_cfg}

    @contextlib.contextmanager
    def stage(self, *modules):
        """Run with `modules` on the device; with offload, back to the host afterwards."""
        if self.levers.offload:
            for module in modules:
                module.to(self.device)
        try:
            yield
        finally:
            if self.levers.offload:
                for module in modules:
                    module.to(HOST)


@torch.no_grad()
def generate(models: Models, batch: int, seq_len: int, guidance: float, decoder_guidance: float) -> dict[str, float]:
    """One text-to-image batch through the shipped calls; returns seconds per stage."""
    device, levers, times = models.device, models.levers, {}
    dtype = torch.bfloat16
    start = time.perf_counter()
    with models.stage(models.backbone):
        ids, attention_mask = random_prompt_ids(models.backbone, batch, seq_len)
        cond, mask = models.backbone.condition_from_ids(ids, attention_mask)
        sync(device)
    times["backbone"] = time.perf_counter() - start
    start = time.perf_counter()
    with models.stage(models.generator):
        noise = torch.randn(batch, *models.token_shape, device=device, dtype=dtype)
        grid = models.dit_objective.sample(models.generator, noise, cond.to(dtype), mask,
                                           num_inference_steps=levers.steps, guidance_scale=guidance,
                                           **models.sampler_options())
        tokens = grid.flatten(2).transpose(1, 2)
        sync(device)
    times["dit"] = time.perf_counter() - start
    start = time.perf_counter()
    with models.stage(models.decoder):
        uncond = torch.zeros_like(tokens)  # stands for the cached empty-prompt tokens (same cost)
        images = models.decoder.decode(tokens, uncond, num_inference_steps=levers.decoder_steps,
                                       guidance_scale=decoder_guidance, **models.sampler_options())
        sync(device)
    times["decoder"] = time.perf_counter() - start
    times["total"] = sum(times.values())
    times["image_side"] = images.shape[-1]
    return times


def measure(config, device, levers: Levers, batch_sizes, args) -> list[dict]:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    models = Models(config, device, levers)
    rows = []
    for batch in batch_sizes:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(args.warmup):
            generate(models, batch, args.seq_len, args.guidance, args.decoder_guidance)
        runs = [generate(models, batch, args.seq_len, args.guidance, args.decoder_guidance) for _ in range(args.repeats)]
        mean = {k: sum(r[k] for r in runs) / len(runs) for k in ("backbone", "dit", "decoder", "total")}
        rows.append({"batch": batch, "resolution": int(runs[0]["image_side"]), **{f"{k}_s": v for k, v in mean.items()},
                     "s_per_image": mean["total"] / batch, "images_per_s": batch / mean["total"],
                     "peak_memory_gb": peak_memory_gb(device), "levers": {f.name: getattr(levers, f.name)
                                                                          for f in fields(levers)}})
    del models
    return rows


def print_rows(title: str, rows: list[dict]) -> None:
    print(title)
    print(f"  {'batch':>5} {'px':>5} {'backbone s':>10} {'DiT s':>8} {'decoder s':>9} {'total s':>8} {'s/image':>8} "
          f"{'images/s':>8} {'peak GB':>8}")
    for r in rows:
        print(f"  {r['batch']:>5} {r['resolution']:>5} {r['backbone_s']:>10.3f} {r['dit_s']:>8.3f} "
              f"{r['decoder_s']:>9.3f} {r['total_s']:>8.3f} {r['s_per_image']:>8.3f} {r['images_per_s']:>8.2f} "
              f"{r['peak_memory_gb']:>8.2f}")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="blip3o-8b", choices=["blip3o-8b", "blip3o-4b"])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU: the same code path")
    parser.add_argument("--batch-sizes", default="1,16", help="comma-separated")
    parser.add_argument("--seq-len", type=int, default=None, help=f"prompt tokens incl. queries (default {DEFAULT_SEQ_LEN})")
    parser.add_argument("--steps", type=int, default=30, help="DiT steps")
    parser.add_argument("--decoder-steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--decoder-guidance", type=float, default=3.0)
    parser.add_argument("--attention", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--no-batched-cfg", dest="batched_cfg", action="store_false")
    parser.add_argument("--cfg-fraction", type=float, default=1.0)
    parser.add_argument("--solver", default="euler", choices=["euler", "dpm"])
    parser.add_argument("--offload", action="store_true")
    parser.add_argument("--vae-slicing", action="store_true")
    parser.add_argument("--sweep", action="store_true", help="also each lever flipped from these settings")
    parser.add_argument("--sweep-skip", default="", help="comma-separated levers left out of --sweep")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="print one JSON list")
    args = parser.parse_args(argv)
    if not 0.0 <= args.cfg_fraction <= 1.0:
        raise SystemExit("--cfg-fraction must be within [0, 1]")
    device = pick_device(args.device)
    config = bench_config(args.preset, args.tiny)
    args.seq_len = args.seq_len or (config.backbone.num_queries + 16 if args.tiny else DEFAULT_SEQ_LEN)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    base = Levers(args.attention, args.compile, args.batched_cfg, args.cfg_fraction, args.solver, args.steps,
                  args.decoder_steps, args.offload, args.vae_slicing)
    torch.manual_seed(0)
    results = [{"setting": "baseline", "rows": measure(config, device, base, batch_sizes, args)}]
    if args.sweep:
        skip = set(filter(None, args.sweep_skip.split(",")))
        for name, change in SWEEP.items():
            if name not in skip and any(getattr(base, k) != v for k, v in change.items()):
                results.append({"setting": f"{name}: " + ", ".join(f"{k}={v}" for k, v in change.items()),
                                "rows": measure(config, device, replace(base, **change), batch_sizes, args)})
    if args.json:
        print(json.dumps(results))
    else:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
        print(f"fullscale_infer: {config.name} on {name}, torch {torch.__version__}; {base}")
        for result in results:
            print_rows(result["setting"], result["rows"])
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
