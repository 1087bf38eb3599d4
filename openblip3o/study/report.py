"""`docs/design_study.md` from the study's results: the tables, plots, sample sheet and a verdict per paper claim.

Verdicts are decided by one rule on our numbers (see `verdicts.RULE`, written into the report): a claim is supported
or contradicted only when every pair that bears on it differs beyond 2 standard errors the same way.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..data.shapes.prompts import TAGS
from ..evaluation.geneval.layout import prompt_dir, read_metadata_file, sample_path
from .verdicts import RULE, SE_MULTIPLIER, binomial_se, claims, differences_table, mean_se

METRICS_PLOT = "design_study_metrics.png"
SAMPLES_PLOT = "design_study_samples.png"
SAMPLES_PER_PROMPT_SHOWN = 2  # the sample sheet shows the first prompt of each tag at this many seeds
SHEET_TILE = 96  # sample tiles are drawn at least this big, so that two of them carry a readable prompt above
LABEL_PAD = 4  # pixels around the sheet's labels
ERROR_CAPSIZE = 3


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pm(value, se, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if se is None or not math.isfinite(se) else f"{value:.{digits}f} ± {se:.{digits}f}"


def _errors(row: dict) -> dict[str, float | None]:
    """The standard errors of a row's GenEval, diversity and VQA (None where the results do not hold them)."""
    g = row["geneval"]
    diversity = mean_se(row.get("diversity_per_prompt"))
    vqa = binomial_se(row["vqa_final"], row.get("vqa_questions"))
    return {"geneval": binomial_se(g["overall"], g["images"]),
            "diversity": diversity if math.isfinite(diversity) else None, "vqa": vqa if math.isfinite(vqa) else None}


def _tags(rows: dict) -> list[str]:
    return [t for t in TAGS if any(t in r["geneval"]["tags"] for r in rows.values())]


def _minutes(r: dict) -> str:
    first, final = r.get("train_minutes_first"), r["train_minutes"]
    return f"{first:.1f} → {final:.1f}" if r.get("top_up") and r["top_up"].get("rounds") else f"{final:.1f}"


def table(results: dict) -> list[str]:
    ref, v = results.get("reference", {}), results["variants"]
    tags = _tags(v)
    head = ["variant", "seed", "target", "objective", "schedule", "steps scale", "steps", "train min",
            "GenEval (± SE)", *tags, "diversity (± SE)", "FD", "VQA after und.", "VQA final (± SE)"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, r in v.items():
        g, se = r["geneval"], _errors(r)
        cells = [key, str(r.get("seed", results["config"]["seed"])), r["target"], r["objective"], r["schedule"],
                 f"{r['steps_scale']:.4f}", str(r.get("final_steps", "–")), _minutes(r),
                 _pm(g["overall"], se["geneval"]),
                 *(_fmt(g["tags"].get(t)) for t in tags), _pm(r["diversity"], se["diversity"], 4), _fmt(r.get("fd"), 2),
                 _fmt(r.get("vqa_after_understanding")), _pm(r["vqa_final"], se["vqa"])]
        rows.append("| " + " | ".join(cells) + " |")
    truth = ["ground truth", "–", "–", "–", "–", "–", "–", "–", _fmt(ref.get("geneval")), *(["–"] * len(tags)),
             _fmt(ref.get("diversity"), 4), _fmt(ref.get("fd_truth_vs_truth"), 2), "–", "–"]
    rows.append("| " + " | ".join(truth) + " |")
    return rows


def equal_steps_table(equal: dict) -> list[str]:
    """The rows measured at the common step, from their own runs' checkpoints."""
    v = equal["variants"]
    tags = _tags(v)
    head = ["variant", "step", "of its steps", "GenEval (± SE)", *tags, "diversity (± SE)", "VQA final (± SE)"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, r in v.items():
        g, se = r["geneval"], _errors(r)
        cells = [key, str(r["step"]), str(r["final_steps"]), _pm(g["overall"], se["geneval"]),
                 *(_fmt(g["tags"].get(t)) for t in tags), _pm(r["diversity"], se["diversity"], 4),
                 _pm(r["vqa_final"], se["vqa"])]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def plot_metrics(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v, ref = results["variants"], results.get("reference", {})
    names = list(v)
    errors = [_errors(v[n]) for n in names]
    # (title, values, standard errors, ground-truth reference line, bounded to [0, 1])
    panels = [("GenEval overall (± SE)", [v[n]["geneval"]["overall"] for n in names], [e["geneval"] for e in errors],
               ref.get("geneval"), True),
              ("diversity (± SE)", [v[n]["diversity"] for n in names], [e["diversity"] for e in errors],
               ref.get("diversity"), False),
              ("FD to ground truth (mini CLIP)", [v[n].get("fd") or 0.0 for n in names], None,
               ref.get("fd_truth_vs_truth"), False),
              ("VQA final (± SE)", [v[n]["vqa_final"] for n in names], [e["vqa"] for e in errors], None, True)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    for ax, (title, values, se, reference, bounded) in zip(axes, panels):
        yerr = None if se is None else [0.0 if s is None else s for s in se]
        ax.bar(range(len(names)), values, yerr=yerr, capsize=ERROR_CAPSIZE, color="tab:blue")
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
    """Rows: ground truth, then each row of the study; columns: the first prompt of each tag (its first samples),
    its prompt written above them, so a reader sees whether each variant draws what it was asked."""
    prompts = [TAGS.index(t) * n_prompts_per_tag for t in TAGS]
    columns = [(i, j) for i in prompts for j in range(SAMPLES_PER_PROMPT_SHOWN)]
    sources = [("ground truth", root / "truth")] + [(t, root / r["images_dir"]) for t, r in results["variants"].items()]
    tiles = [[Image.open(sample_path(folder, i, j)).convert("RGB") for i, j in columns] for _, folder in sources]
    side = max(tiles[0][0].size[0], SHEET_TILE)
    font = ImageFont.load_default()
    span = side * SAMPLES_PER_PROMPT_SHOWN  # a prompt's label spans its samples' columns
    chars = max(1, int((span - 2 * LABEL_PAD) // max(font.getlength("x"), 1)))
    labels = [textwrap.wrap(read_metadata_file(prompt_dir(root / "truth", i) / "metadata.jsonl")[0]["prompt"], chars)
              for i in prompts]
    _, top, _, bottom = font.getbbox("Ag")
    line_h = bottom - top + LABEL_PAD
    header = max(len(lines) for lines in labels) * line_h + 2 * LABEL_PAD
    label_w = side * 2
    sheet = Image.new("RGB", (label_w + side * len(columns), header + side * len(sources)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for p, lines in enumerate(labels):
        for n, line in enumerate(lines):
            draw.text((label_w + p * span + LABEL_PAD, LABEL_PAD + n * line_h), line, fill=(0, 0, 0), font=font)
    for r, ((name, _), row) in enumerate(zip(sources, tiles)):
        draw.text((LABEL_PAD, header + r * side + side // 2 - line_h // 2), name, fill=(0, 0, 0), font=font)
        for c, tile in enumerate(row):
            sheet.paste(tile.resize((side, side), Image.NEAREST), (label_w + c * side, header + r * side))
    sheet.save(path)


def _budget_line(results: dict) -> str:
    cfg = results["config"]
    if results["compute"] != "equal wall-clock":
        return f"the same steps for every variant (steps scale {cfg['steps_scale']:g} of the preset's loops)"
    tolerance = cfg.get("top_up_tolerance")
    top_up = (f", and a variant that came out more than {tolerance:.0%} short topped up by continuing its last stage "
              f"from its checkpoint (train min: first run → final)" if tolerance else "")
    return (f"{cfg['budget_minutes']:g} training minutes per variant, converted to a step scale by a two-point timing "
            f"probe{top_up}")


def _equal_steps_section(results: dict) -> list[str]:
    equal = results.get("equal_steps")
    if not equal:
        return []
    return ["## Equal steps (the paper's framing)", "",
            f"The same runs measured at generation (or joint) step **{equal['step']}**, the common step of their "
            "checkpoints, with the EMA weights the stage keeps. A checkpoint of a longer run is that run after this "
            "many steps, not a run of this many steps alone: its learning rate had not yet annealed.", "",
            *equal_steps_table(equal), "", "Verdicts at equal steps, by the same rule:", "",
            *claims({"variants": equal["variants"]}), ""]


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
    seeds = cfg.get("reference_seeds", 1)
    lines = [
        "# Design study: BLIP3-o's choices at mini scale", "",
        f"Command: `{command}`. Compute: **{results['compute']}** — {_budget_line(results)}. Hardware: {hw['cpus']} "
        f"CPUs ({hw['processor']}), {hw['torch_threads']} torch threads, CUDA {'yes' if hw['cuda'] else 'no'}, torch "
        f"{hw['torch']}. Preset `{cfg['preset']}`, seed {cfg['seed']}"
        + (f"; the reference variant also at {seeds - 1} further training seed(s) (same sampling seed)." if seeds > 1
           else "."), "",
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
        "*Samples: the first prompt of each tag (written above its columns, two seeds), ground truth first.*", "",
        "## The paper's claims against our numbers", "", RULE, "", *claims(results), "",
        f"Every difference a verdict rests on, beside the seed-to-seed spread of the reference variant (the same "
        f"recipe trained twice), with the {SE_MULTIPLIER:g} standard errors it must exceed:", "",
        *differences_table(results["variants"]), "",
        *_equal_steps_section(results),
        "The verdicts apply to this budget and hardware only.", "",
    ]
    doc_path.write_text("\n".join(lines), encoding="utf-8")
    return doc_path


def _relpath(target: Path, start: Path) -> str:
    import os

    return os.path.relpath(target.resolve(), start.resolve())
