"""`docs/design_study.md` from the study's results: the table, plots, sample grids and a verdict per paper claim.

Verdicts are decided by fixed rules on our numbers, stated next to each: a GenEval difference counts only when it
exceeds twice its binomial standard error; diversity and VQA differences count above fixed tolerances.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image

from ..data.shapes.prompts import TAGS
from ..evaluation.geneval.layout import sample_path

SE_MULTIPLIER = 2.0  # a GenEval difference must exceed this many standard errors to count
DIVERSITY_RATIO = 1.5  # flow matching "beats" MSE on diversity when its diversity is at least this much higher
VQA_TOLERANCE = 0.01  # "intact": final VQA within this of the VQA after understanding
VACUOUS_VQA = 0.05  # below this after understanding there is no understanding to keep: the claim is not tested
METRICS_PLOT = "design_study_metrics.png"
SAMPLES_PLOT = "design_study_samples.png"
SAMPLE_COLUMNS_PER_TAG = 1


def _se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _compare_geneval(a: dict, b: dict) -> int:
    """+1 if a is better than b beyond SE_MULTIPLIER standard errors, -1 if worse, 0 if indistinguishable."""
    pa, pb = a["geneval"]["overall"], b["geneval"]["overall"]
    na, nb = a["geneval"]["images"], b["geneval"]["images"]
    margin = SE_MULTIPLIER * math.sqrt(_se(pa, na) ** 2 + _se(pb, nb) ** 2)
    return 1 if pa - pb > margin else -1 if pb - pa > margin else 0


def _verdict(signs: list[int], untested: str = "**not measured** (the variants it needs were not run)") -> str:
    if not signs:
        return untested
    if all(s > 0 for s in signs):
        return "**supported**"
    if any(s < 0 for s in signs) and not any(s > 0 for s in signs):
        return "**contradicted**"
    return "**not supported** (no difference beyond noise, or mixed)"


def claims(results: dict) -> list[str]:
    """One sentence per paper claim, with the numbers and the rule behind the verdict."""
    v = results["variants"]
    lines = []
    pairs = [(c, a) for c, a in (("clip-flow", "vae-flow"), ("clip-mse", "vae-mse")) if c in v and a in v]
    signs = [_compare_geneval(v[c], v[a]) for c, a in pairs]
    detail = "; ".join(f"{c} {v[c]['geneval']['overall']:.3f} vs {a} {v[a]['geneval']['overall']:.3f}" for c, a in pairs)
    lines.append(f"- *CLIP features beat VAE latents for prompt alignment* (GenEval): {_verdict(signs)} — {detail or 'n/a'} "
                 f"(a difference counts beyond {SE_MULTIPLIER:g} binomial standard errors).")
    pairs = [(f, m) for f, m in (("clip-flow", "clip-mse"), ("vae-flow", "vae-mse")) if f in v and m in v]
    signs = [1 if v[f]["diversity"] >= DIVERSITY_RATIO * v[m]["diversity"] else
             -1 if v[m]["diversity"] >= DIVERSITY_RATIO * v[f]["diversity"] else 0 for f, m in pairs]
    detail = "; ".join(f"{f} {v[f]['diversity']:.4f} vs {m} {v[m]['diversity']:.4f}" for f, m in pairs)
    align = "; ".join(f"GenEval {v[f]['geneval']['overall']:.3f} vs {v[m]['geneval']['overall']:.3f}" for f, m in pairs)
    lines.append(f"- *Flow matching beats MSE, which collapses diversity* (diversity): {_verdict(signs)} — {detail or 'n/a'} "
                 f"(flow must be ≥ {DIVERSITY_RATIO:g}× MSE; alignment for reference: {align or 'n/a'}).")
    seq = v.get("clip-flow")
    signs, detail = [], "n/a"
    if seq and seq.get("vqa_after_understanding") is not None:
        before, after = seq["vqa_after_understanding"], seq["vqa_final"]
        signs = [1 if abs(after - before) <= VQA_TOLERANCE else -1] if before > VACUOUS_VQA else []
        detail = f"sequential VQA {before:.3f} after understanding → {after:.3f} after generation"
        if before <= VACUOUS_VQA:
            detail += f" (≤ {VACUOUS_VQA:g}: understanding was never learned at this budget, nothing to keep)"
        if "clip-flow-joint" in v:
            detail += f"; joint training ends at {v['clip-flow-joint']['vqa_final']:.3f}"
    untested = "**not tested**" if seq and seq.get("vqa_after_understanding") is not None else None
    lines.append(f"- *Sequential training keeps understanding intact*: {_verdict(signs, *filter(None, [untested]))} — {detail} "
                 f"(intact = within {VQA_TOLERANCE:g}).")
    return lines


def table(results: dict) -> list[str]:
    ref = results.get("reference", {})
    tags = [t for t in TAGS if any(t in r["geneval"]["tags"] for r in results["variants"].values())]
    head = ["variant", "target", "objective", "schedule", "steps scale", "train min", "GenEval (± SE)",
            *tags, "diversity", "FD", "VQA after und.", "VQA final"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for tag, r in results["variants"].items():
        g = r["geneval"]
        cells = [tag, r["target"], r["objective"], r["schedule"], f"{r['steps_scale']:.4f}", f"{r['train_minutes']:.1f}",
                 f"{g['overall']:.3f} ± {_se(g['overall'], g['images']):.3f}", *(_fmt(g["tags"].get(t)) for t in tags),
                 _fmt(r["diversity"], 4), _fmt(r.get("fd"), 2), _fmt(r.get("vqa_after_understanding")),
                 _fmt(r["vqa_final"])]
        rows.append("| " + " | ".join(cells) + " |")
    truth = ["ground truth", "–", "–", "–", "–", "–", _fmt(ref.get("geneval")), *(["–"] * len(tags)),
             _fmt(ref.get("diversity"), 4), _fmt(ref.get("fd_truth_vs_truth"), 2), "–", "–"]
    rows.append("| " + " | ".join(truth) + " |")
    return rows


def plot_metrics(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v, ref = results["variants"], results.get("reference", {})
    names = list(v)
    # (title, values, ground-truth reference line, bounded to [0, 1])
    panels = [("GenEval overall", [v[n]["geneval"]["overall"] for n in names], ref.get("geneval"), True),
              ("diversity", [v[n]["diversity"] for n in names], ref.get("diversity"), False),
              ("FD to ground truth (mini CLIP)", [v[n].get("fd") or 0.0 for n in names], ref.get("fd_truth_vs_truth"), False),
              ("VQA final", [v[n]["vqa_final"] for n in names], None, True)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    for ax, (title, values, reference, bounded) in zip(axes, panels):
        ax.bar(range(len(names)), values, color="tab:blue")
        if reference is not None:
            ax.axhline(reference, color="tab:green", linestyle="--", label="ground truth")
            ax.legend(fontsize=7)
        if bounded:
            ax.set_ylim(0, 1.05)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def sample_sheet(results: dict, root: Path, path: Path, n_prompts_per_tag: int) -> None:
    """Rows: ground truth, then each variant; columns: the first prompt of each tag (sample 0 and 1)."""
    columns = [(TAGS.index(t) * n_prompts_per_tag, j) for t in TAGS for j in range(2)]
    sources = [("ground truth", root / "truth")] + [(t, root / r["images_dir"]) for t, r in results["variants"].items()]
    tiles = [[Image.open(sample_path(folder, i, j)).convert("RGB") for i, j in columns] for _, folder in sources]
    side = tiles[0][0].size[0]
    label_w = side * 2
    sheet = Image.new("RGB", (label_w + side * len(columns), side * len(sources)), (255, 255, 255))
    from PIL import ImageDraw

    draw = ImageDraw.Draw(sheet)
    for r, ((name, _), row) in enumerate(zip(sources, tiles)):
        draw.text((4, r * side + side // 2 - 5), name, fill=(0, 0, 0))
        for c, tile in enumerate(row):
            sheet.paste(tile.resize((side, side)), (label_w + c * side, r * side))
    sheet.save(path)


def write_report(results: dict, study_dir: str | Path, doc_path: str | Path, images_dir: str | Path,
                 command: str = "openblip3o study --preset mini") -> Path:
    """Write the markdown report (and its images); returns its path. Plots need matplotlib (`[eval]` extra)."""
    study_dir, doc_path, images_dir = Path(study_dir), Path(doc_path), Path(images_dir)
    doc_path.parent.mkdir(parents=True, exist_ok=True)
    images_dir.mkdir(parents=True, exist_ok=True)
    cfg, hw = results["config"], results["hardware"]
    rel = Path(_relpath(images_dir, doc_path.parent))
    sample_sheet(results, study_dir, images_dir / SAMPLES_PLOT, cfg["prompts_per_tag"])
    try:
        plot_metrics(results, images_dir / METRICS_PLOT)
        plot_line = f"![metrics]({(rel / METRICS_PLOT).as_posix()})"
    except ImportError:
        plot_line = "*(plots need matplotlib: `pip install -e \".[eval]\"`)*"
    budget = (f"{cfg['budget_minutes']:g} training minutes per variant, converted to a step scale by a two-point "
              f"timing probe" if results["compute"] == "equal wall-clock" else
              f"the same steps for every variant (steps scale {cfg['steps_scale']:g} of the preset's loops)")
    lines = [
        "# Design study: BLIP3-o's choices at mini scale", "",
        f"Command: `{command}`. Compute: **{results['compute']}** — {budget}. Hardware: {hw['cpus']} CPUs "
        f"({hw['processor']}), {hw['torch_threads']} torch threads, CUDA {'yes' if hw['cuda'] else 'no'}, torch "
        f"{hw['torch']}. Preset `{cfg['preset']}`, seed {cfg['seed']}.", "",
        *([f"Start: every variant begins from `{cfg['init']}`'s backbone (understanding already trained) and, for "
           f"the clip variants, its target encoder and decoder; the vae variants share one target VAE trained with "
           f"the preset's full autoencoder loop. Queries, projector and DiT start fresh; the budget is spent on "
           f"generation (sequential: backbone frozen) or joint training only.", ""] if cfg.get("init") else []),
        f"Evaluation: mini GenEval on {results['prompts']} held-out prompts ({cfg['prompts_per_tag']} per tag) × "
        f"{cfg['n_samples']} samples; diversity = mean pairwise absolute pixel difference among one prompt's samples "
        f"(0–1); FD = Fréchet distance to ground-truth renders of the same prompts in the mini CLIP space (target "
        f"encoder of `{results.get('reference', {}).get('fd_encoder', '–')}`, tokens mean-pooled; the ground-truth "
        f"row is a second ground-truth draw, the floor); VQA = exact match on {cfg['vqa_scenes']} held-out scenes.", "",
        *table(results), "", plot_line, "",
        f"![samples]({(rel / SAMPLES_PLOT).as_posix()})", "",
        "*Samples: the first prompt of each tag (two seeds), ground truth first.*", "",
        "## The paper's claims against our numbers", "", *claims(results), "",
        "Small prompt sets and short budgets make these numbers noisy; the verdicts apply to this budget and "
        "hardware only.", "",
    ]
    doc_path.write_text("\n".join(lines), encoding="utf-8")
    return doc_path


def _relpath(target: Path, start: Path) -> str:
    import os

    return os.path.relpath(target.resolve(), start.resolve())

