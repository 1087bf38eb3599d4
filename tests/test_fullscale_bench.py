"""The full-scale benchmark scripts run their real code path at tiny size on the CPU (one step each)."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"
TIMEOUT_S = 120


def run_json(script: str, *args: str):
    out = subprocess.run([sys.executable, str(BENCH / script), "--tiny", "--json", *args], capture_output=True,
                         text=True, timeout=TIMEOUT_S, cwd=BENCH.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_train_bench_one_step_with_both_options():
    result = run_json("fullscale_train.py", "--steps", "1", "--warmup", "0", "--cached-features",
                      "--activation-checkpointing")
    assert result["preset"] == "tiny" and result["cached_features"] and result["activation_checkpointing"]
    assert result["samples_per_s"] > 0 and result["achieved_tflops"] > 0 and result["peak_memory_gb"] > 0
    assert result["tflop_per_sample_by_part"]["encoder"] == 0 and result["tflop_per_sample_by_part"]["dit"] > 0


def test_train_bench_flops_of_the_real_preset_on_meta():
    result = run_json("fullscale_train.py", "--flops-only", "--cached-features")  # --tiny ignored sizes: tiny
    assert result["tflop_per_sample"] > 0
    out = subprocess.run([sys.executable, str(BENCH / "fullscale_train.py"), "--preset", "blip3o-8b", "--flops-only",
                          "--cached-features"], capture_output=True, text=True, timeout=TIMEOUT_S)
    parts = json.loads(out.stdout.strip().splitlines()[-1])["tflop_per_sample_by_part"]
    assert 13 < parts["backbone"] < 14.5 and 0.5 < parts["dit"] < 0.7  # 7B LLM x 512 tokens; 1.4B DiT x 64 tokens


def test_infer_bench_one_step_per_stage():
    results = run_json("fullscale_infer.py", "--batch-sizes", "1", "--steps", "1", "--decoder-steps", "1",
                       "--warmup", "0", "--repeats", "1", "--no-batched-cfg", "--cfg-fraction", "0.5",
                       "--solver", "dpm", "--vae-slicing")
    (row,) = results[0]["rows"]
    assert row["resolution"] == 64 and row["images_per_s"] > 0
    assert all(row[f"{stage}_s"] > 0 for stage in ("backbone", "dit", "decoder"))
    assert row["levers"]["solver"] == "dpm" and not row["levers"]["batched_cfg"]
