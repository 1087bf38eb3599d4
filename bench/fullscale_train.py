"""One generation-training step of a full BLIP3-o preset at its real sizes (random weights, bf16): samples/s/GPU,
achieved TFLOP/s, MFU and peak memory.

    python bench/fullscale_train.py --preset blip3o-8b --batch-size 16 --steps 5 [--cached-features]
                                    [--activation-checkpointing] [--json]
    python bench/fullscale_train.py --tiny --steps 1 --warmup 0      # the same code path, tiny sizes, on the CPU

The step is BLIP3-o's stage-1 step: frozen Qwen2.5-VL (bf16) runs the prompt with the 64 learnable queries last and
back-propagates to the queries only; the DiT (fp32 master weights, bf16 autocast) flow-matches the 8x8 x 1792 EVA-CLIP
targets; AdamW updates DiT + queries. The EVA-CLIP encoder (frozen, bf16) runs under no_grad unless
--cached-features replaces its output by random target tokens. Models are built directly on the accelerator in
their storage dtype: nothing full-size is allocated on the host.

Analytic FLOPs per sample (matmuls only, a multiply-add = 2 FLOPs; P = weights inside nn.Linear, embeddings and
norms excluded; T = prompt tokens incl. the 64 queries; N = Nc = 64 DiT tokens / condition tokens):
    backbone = 2 x (2 P_llm T + 2 L_llm T^2 d_llm)          forward + backward to the queries (input gradients only,
                                                            ~ the forward again; causal attention = half of 4 T^2 d)
    DiT      = 3 x (2 P_dit N + 4 L_dit N (N + Nc) d_dit)   forward + backward (input and weight gradients)
    encoder  = 2 P_eva T_eva + 4 L_eva T_eva^2 d_eva        forward only; 0 with --cached-features
MFU = achieved FLOP/s / peak dense bf16 FLOP/s of the device (--peak-tflops; H100/H200 SXM: 989).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch
from fullscale_setup import (
    bench_config,
    build_backbone,
    build_generator,
    default_dtype,
    generator_channels,
    peak_memory_gb,
    pick_device,
    random_prompt_ids,
    sync,
)
from torch import nn

from openblip3o.models.encoders import build_target_encoder
from openblip3o.models.unified import tokens_to_grid
from openblip3o.objectives import build_objective

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, SXM
TINY_VOCAB = 320  # the tiny CLIP text tower's vocabulary (its text side is never run here)
TINY_EOS_ID = 1  # the tiny CLIP text tower's end token (never 2: CLIP's legacy pooling)
LEARNING_RATE = 1e-4  # BLIP3-o stage 1
DEFAULT_SEQ_LEN = 512  # BLIP3-o's maximum: 447 prompt tokens + [IMG] + 64 queries
TINY_PROMPT_TOKENS = 16  # tiny prompt length before the queries


def linear_params(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def build_encoder(config, device, dtype):
    with torch.device(device), default_dtype(dtype):
        encoder = build_target_encoder(config.target, text_vocab_size=TINY_VOCAB, eos_token_id=TINY_EOS_ID)
    return encoder.to(device, dtype).eval().requires_grad_(False)


def flops_per_sample(config, qwen, generator, encoder, seq_len: int, cached: bool) -> dict[str, float]:
    text = qwen.config.text_config
    llm_linear = linear_params(qwen.model.language_model)
    backbone = 2 * (2 * llm_linear * seq_len + 2 * text.num_hidden_layers * seq_len**2 * text.hidden_size)
    grid, queries = config.target.grid_size**2, config.backbone.num_queries
    dit_cfg = generator.dit.config
    dit = 3 * (2 * linear_params(generator.dit) * grid
               + 4 * dit_cfg.num_layers * grid * (grid + queries) * dit_cfg.hidden_size)
    enc = 0.0
    if not cached and encoder is not None:
        vision = getattr(encoder, "vision", None) or getattr(encoder, "model", None)
        tokens = encoder_tokens(config, encoder)
        layers, width = encoder_depth_width(vision)
        enc = 2 * linear_params(vision) * tokens + 4 * layers * tokens**2 * width
    return {"backbone": float(backbone), "dit": float(dit), "encoder": float(enc)}


def encoder_tokens(config, encoder) -> int:
    patch = getattr(getattr(encoder, "vision", None), "config", None)
    patch = patch.patch_size if patch is not None else encoder.model.patch_embed.patch_size[0]
    return (config.target.image_size // patch) ** 2 + 1  # + CLS


def encoder_depth_width(vision) -> tuple[int, int]:
    if hasattr(vision, "config"):  # transformers CLIP / SigLIP vision model
        return vision.config.num_hidden_layers, vision.config.hidden_size
    return len(vision.blocks), vision.embed_dim  # timm EVA


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given is not None or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def run(args) -> dict:
    device = torch.device("meta") if args.flops_only else pick_device(args.device)
    config = bench_config(args.preset, args.tiny)
    seq_len = args.seq_len or (config.backbone.num_queries + TINY_PROMPT_TOKENS if args.tiny else DEFAULT_SEQ_LEN)
    if seq_len <= config.backbone.num_queries:
        raise SystemExit(f"--seq-len {seq_len} must exceed the {config.backbone.num_queries} queries")
    store = torch.bfloat16
    autocast_dtype = torch.bfloat16
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    backbone = build_backbone(config, device, store, args.attention)  # frozen; its fp32 queries train
    qwen = backbone.model
    encoder = None if args.cached_features else build_encoder(config, device, store)
    token_dim = encoder.token_dim if encoder is not None else generator_channels(config)
    generator = build_generator(config, device, backbone.condition_dim)
    objective = build_objective(config.objective)
    if args.flops_only:  # analytic FLOPs from the real sizes, built on the meta device (no memory)
        flops = flops_per_sample(config, qwen, generator, encoder, seq_len, args.cached_features)
        return {"preset": config.name, "seq_len": seq_len, "cached_features": args.cached_features,
                "tflop_per_sample_by_part": {k: v / 1e12 for k, v in flops.items()},
                "tflop_per_sample": sum(flops.values()) / 1e12}
    if args.activation_checkpointing:
        generator.enable_activation_checkpointing()
        # transformers 5 renamed gradient_checkpointing_enable(gradient_checkpointing_kwargs=...)
        if hasattr(qwen, "activation_checkpointing_enable"):
            qwen.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            qwen.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        qwen.train()  # transformers checkpoints only in training mode (Qwen has no dropout)
    params = [*generator.parameters(), backbone.queries]
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.0, fused=device.type == "cuda")
    batch, grid = args.batch_size, config.target.grid_size
    image_size = config.target.image_size

    def step() -> float:
        input_ids, attention_mask = random_prompt_ids(backbone, batch, seq_len)
        with torch.autocast(device.type, dtype=autocast_dtype):
            if encoder is None:
                x0 = torch.randn(batch, token_dim, grid, grid, device=device)
            else:
                with torch.no_grad():
                    images = torch.rand(batch, 3, image_size, image_size, device=device, dtype=store)
                    x0 = tokens_to_grid(encoder.normalize(encoder.encode(images)), grid).float()
            cond, mask = backbone.condition_from_ids(input_ids, attention_mask)  # the pipeline's Backbone.condition
            loss = objective.loss(generator, x0, cond, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    for _ in range(args.warmup):
        step()
    sync(device)
    start = time.perf_counter()
    losses = [step() for _ in range(args.steps)]
    sync(device)
    seconds = (time.perf_counter() - start) / args.steps
    flops = flops_per_sample(config, qwen, generator, encoder, seq_len, args.cached_features)
    total = sum(flops.values()) * batch
    achieved = total / seconds / 1e12
    peak = peak_tflops(device, args.peak_tflops)
    return {
        "preset": config.name, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)", "batch_size": batch, "seq_len": seq_len,
        "steps": args.steps, "cached_features": args.cached_features,
        "activation_checkpointing": args.activation_checkpointing, "attention": args.attention,
        "seconds_per_step": seconds, "samples_per_s": batch / seconds,
        "tflop_per_step": total / 1e12, "tflop_per_sample_by_part": {k: v / 1e12 for k, v in flops.items()},
        "achieved_tflops": achieved, "peak_tflops": peak, "mfu": achieved / peak if peak else None,
        "peak_memory_gb": peak_memory_gb(device), "loss": losses[-1],
        "trainable_parameters": sum(p.numel() for p in params),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="blip3o-8b", choices=["blip3o-8b", "blip3o-4b"])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU: the same code path")
    parser.add_argument("--batch-size", type=int, default=16, help="per GPU (BLIP3-o: 16)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--seq-len", type=int, default=None, help=f"prompt tokens incl. queries (default {DEFAULT_SEQ_LEN})")
    parser.add_argument("--cached-features", action="store_true", help="skip EVA-CLIP: random target tokens")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--attention", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: by GPU name)")
    parser.add_argument("--flops-only", action="store_true", help="analytic FLOPs only, models on the meta device")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.tiny and args.batch_size == parser.get_default("batch_size"):
        args.batch_size = 2
    result = run(args)
    if args.json or args.flops_only:
        print(json.dumps(result))
    else:
        print(f"fullscale_train: {result['preset']} on {result['device']}, torch {torch.__version__}")
        print(f"  batch {result['batch_size']}, prompt {result['seq_len']} tokens, cached features "
              f"{result['cached_features']}, activation checkpointing {result['activation_checkpointing']}, "
              f"attention {result['attention']}")
        mfu = f"{100 * result['mfu']:.1f}%" if result["mfu"] is not None else "n/a (no peak known)"
        print(f"  {result['seconds_per_step']:.3f} s/step  {result['samples_per_s']:.2f} samples/s  "
              f"{result['achieved_tflops']:.4g} TFLOP/s  MFU {mfu}  peak memory {result['peak_memory_gb']:.2f} GB")
        parts = ", ".join(f"{k} {v:.4g}" for k, v in result["tflop_per_sample_by_part"].items())
        print(f"  TFLOP per sample: {parts}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
