"""`openblip3o eval ...`: the mini GenEval scorer, VQA accuracy, benchmark generation, and the condition probe."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .errors import user_errors
from .evaluate_drift import drift
from .evaluate_failures import failures
from .evaluate_questions import mirror, vqa_heldout_command
from .loading import load_for_command

app = typer.Typer(help="Score generated images and answers.", no_args_is_help=True)
app.command()(failures)
app.command()(drift)
app.command("vqa-heldout")(vqa_heldout_command)
app.command()(mirror)


@app.command()
@user_errors
def score(
    directory: Path = typer.Argument(..., help="Folder in GenEval's layout: DIR/00000/metadata.jsonl, samples/00000.png."),
    results: Path = typer.Option(None, help="Per-image results JSONL (default DIR/results.jsonl)."),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object: overall, tags, images."),
):
    """Score ShapesWorld images by rule with GenEval's semantics; overall = mean of the tag means."""
    from ..evaluation.geneval.score import score_folder

    summary = score_folder(directory, results, progress=not as_json)
    if as_json:
        typer.echo(json.dumps(summary))
        return
    typer.echo(f"{'tag':<14} accuracy")
    for tag, value in summary["tags"].items():
        typer.echo(f"{tag:<14} {value:.4f}")
    typer.echo(f"{'overall':<14} {summary['overall']:.4f}   ({summary['images']} images)")


@app.command()
@user_errors
def vqa(
    predictions: Path = typer.Argument(..., help="JSONL rows with 'prediction' and 'answer' (and optional 'type')."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
):
    """VQA exact-match accuracy after normalisation."""
    from ..evaluation.vqa import vqa_accuracy

    if not predictions.is_file():
        raise FileNotFoundError(f"{predictions}: no such file")
    rows = []
    for line_no, line in enumerate(predictions.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
                rows.append((str(row["prediction"]), str(row["answer"]), str(row.get("type", "all"))))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{predictions}:{line_no}: need a JSON object with 'prediction' and 'answer' ({err})")
    result = vqa_accuracy(*map(list, zip(*rows))) if rows else vqa_accuracy([], [])
    typer.echo(json.dumps(result) if as_json else f"accuracy {result['accuracy']:.4f} over {result['questions']}")


@app.command()
@user_errors
def reconstruct(
    model: str = typer.Option("mini", help="Saved pipeline folder, or a preset with shipped weights."),
    num: int = typer.Option(500, help="Held-out scenes to encode and decode."),
    steps: int = typer.Option(None, help="Decoder steps (default: the model's)."),
    guidance: float = typer.Option(None, help="Decoder guidance (default: the model's)."),
    batch_size: int = typer.Option(100, help="Scenes per batch."),
    seed: int = typer.Option(0, help="Held-out world seed (with --metadata: the placement seed of `data render`)."),
    metadata: Path = typer.Option(None, help="A ShapesWorld GenEval metadata file: score the reconstructions of "
                                  "its ground-truth renders by GenEval's rules, per tag (the autoencoder's ceiling)."),
    n_samples: int = typer.Option(1, help="With --metadata: renders per prompt."),
    round_trip: bool = typer.Option(True, "--round-trip/--raw-tokens", help="With --metadata: pass the tokens "
                                    "through the generator's target space first (what the DiT can at best produce)."),
    as_json: bool = typer.Option(False, "--json", help="Print one object: fully_correct, count, colour, shape, "
                                 "position, scenes; with --metadata, GenEval's summary (overall, tags, images) "
                                 "plus ground_truth and round_trip."),
):
    """Prove the autoencoder alone: held-out scenes -> 64 target tokens -> pixels, scored by rule; with --metadata,
    per GenEval tag on ground-truth renders of its prompts (compare with `eval score` of generated images)."""
    from ..evaluation.reconstruct import SCORE_KEYS, reconstruct_heldout
    from ..inference.pipeline import BLIP3oPipeline

    if num < 1 or n_samples < 1:
        raise ValueError("--num and --n-samples must be at least 1")
    if metadata is not None:
        return _reconstruct_geneval(model, metadata, n_samples, steps, guidance, batch_size, seed, round_trip,
                                    as_json)
    pipe = BLIP3oPipeline.from_pretrained(model)
    sampling = _sampling(None, None, steps, guidance).resolved(pipe.config)
    scores = reconstruct_heldout(pipe, num=num, batch_size=batch_size, seed=seed,
                                 num_inference_steps=sampling.decoder_num_inference_steps,
                                 guidance_scale=sampling.decoder_guidance_scale)
    if as_json:
        typer.echo(json.dumps({k: scores[k] for k in (*SCORE_KEYS, "scenes")}))
    else:
        for key in SCORE_KEYS:
            typer.echo(f"{key:<14} {scores[key]:.4f}")
        typer.echo(f"{'scenes':<14} {scores['scenes']}")


def _reconstruct_geneval(model, metadata, n_samples, steps, guidance, batch_size, seed, round_trip, as_json):
    from tqdm.auto import tqdm

    from ..evaluation.geneval.ceiling import autoencoder_ceiling
    from ..evaluation.geneval.layout import read_metadata_file
    from ..inference.pipeline import BLIP3oPipeline

    records = read_metadata_file(metadata)
    pipe = BLIP3oPipeline.from_pretrained(model)
    sampling = _sampling(None, None, steps, guidance).resolved(pipe.config)
    with tqdm(total=len(records) * n_samples, desc="reconstructing", unit="img") as bar:
        summary = autoencoder_ceiling(pipe, records, n_samples=n_samples, seed=seed,
                                      num_inference_steps=sampling.decoder_num_inference_steps,
                                      guidance_scale=sampling.decoder_guidance_scale, round_trip=round_trip,
                                      batch_size=batch_size, progress=bar.update)
    if as_json:
        typer.echo(json.dumps(summary))
        return
    for tag, score in summary["tags"].items():
        typer.echo(f"{tag:<14} {score:.4f}")
    typer.echo(f"{'overall':<14} {summary['overall']:.4f}  ({summary['images']} images; ground truth "
               f"{summary['ground_truth']:.4f})")


# --- benchmark generation and scoring: GenEval, DPG-Bench, WISE (held-out VQA: evaluate_questions.py) ----------------
MODEL_OPT = typer.Option("mini", "--model", help="A folder written by save_pretrained, or 'mini' (the shipped default).")
STEPS_OPT = typer.Option(None, "--steps", help="DiT sampling steps (default: the model's).")
CFG_OPT = typer.Option(None, "--cfg", help="DiT classifier-free guidance (default: the model's).")
DECODER_STEPS_OPT = typer.Option(None, "--decoder-steps", help="Diffusion-decoder steps (default: the model's).")
DECODER_CFG_OPT = typer.Option(None, "--decoder-cfg", help="Diffusion-decoder guidance (default: the model's).")
BATCH_OPT = typer.Option(16, "--batch-size", help="Images per generation batch.")
SEED_OPT = typer.Option(42, "--seed", help="Sample j of every prompt starts from seed + j (WISE: every image from seed).")
MINI = "mini"
PAIR_BATCH_OPT = typer.Option(64, "--batch-size", help="Prompts per backbone batch, pairs per DiT batch.")


def _sampling(steps, cfg, decoder_steps, decoder_cfg, decoder_level=None):
    from ..config import SamplingSettings

    return SamplingSettings(steps, cfg, decoder_steps, decoder_cfg, decoder_level)


def _pipeline(model: str):
    return load_for_command(model).pipe


@app.command()
@user_errors
def geneval(
    metadata: Path = typer.Option(..., "--metadata", help="A GenEval metadata JSONL file (official or ShapesWorld)."),
    out: Path = typer.Option(..., "--out", help="Output folder: the official layout DIR/NNNNN/metadata.jsonl + samples/."),
    n_samples: int = typer.Option(4, "--n-samples", help="Images per prompt."),
    batch_size: int = BATCH_OPT, seed: int = SEED_OPT, model: str = MODEL_OPT,
    steps: int = STEPS_OPT, cfg: float = CFG_OPT, decoder_steps: int = DECODER_STEPS_OPT,
    decoder_cfg: float = DECODER_CFG_OPT,
    grid: bool = typer.Option(True, "--grid/--no-grid", help="Also write each prompt's grid.png."),
    decoder_level: float = typer.Option(
        None, "--decoder-level",
        help="Token-noise level a level-conditioned decoder is told (default: the model's decoder.generated_level)."),
    seed_per_prompt: bool = typer.Option(
        False, "--seed-per-prompt",
        help="Give prompt i's sample j the seed seed + i * N + j (independent noise per image) instead of the "
             "reference script's seed + j shared by every prompt."),
):
    """Generate GenEval images for any metadata file, resumably; the settings go to DIR/settings.json."""
    from ..evaluation.geneval.generate import generate_layout
    from ..evaluation.geneval.layout import read_metadata_file

    if n_samples < 1 or batch_size < 1:
        raise ValueError("--n-samples and --batch-size must be at least 1")
    records = read_metadata_file(metadata)
    settings = generate_layout(_pipeline(model), records, out, n_samples=n_samples, batch_size=batch_size, seed=seed,
                               grid=grid, sampling=_sampling(steps, cfg, decoder_steps, decoder_cfg, decoder_level),
                               seed_per_prompt=seed_per_prompt)
    typer.echo(f"{len(records)} prompts x {n_samples} images in {out} (model hash {settings['model_hash']})")


@app.command()
@user_errors
def dpg(
    prompts: str = typer.Option(..., "--prompts", help="Folder of official <item_id>.txt prompts, or 'mini'."),
    out: Path = typer.Option(..., "--out", help="Output folder: <item_id>.png, each a 2x2 grid of 4 samples."),
    num: int = typer.Option(100, "--num", help="Mini only: held-out scenes to turn into dense prompts."),
    batch_size: int = BATCH_OPT, seed: int = SEED_OPT, model: str = MODEL_OPT,
    steps: int = STEPS_OPT, cfg: float = CFG_OPT, decoder_steps: int = DECODER_STEPS_OPT,
    decoder_cfg: float = DECODER_CFG_OPT,
):
    """Generate DPG-Bench images in the official layout; 'mini' also writes the question graphs (dpg_bench.csv)."""
    from ..evaluation.dpg import generate_dpg, read_prompts, write_mini_prompts

    texts = write_mini_prompts(out, num) if prompts == MINI else read_prompts(prompts)
    generate_dpg(_pipeline(model), texts, out, seed=seed, batch_size=batch_size,
                 sampling=_sampling(steps, cfg, decoder_steps, decoder_cfg))
    hint = f"; score with: openblip3o eval dpg-score {out}" if prompts == MINI else ""
    typer.echo(f"{len(texts)} grids in {out}{hint}")


@app.command("dpg-score")
@user_errors
def dpg_score(
    directory: Path = typer.Argument(..., help="Folder with <item_id>.png grids and the mini dpg_bench.csv."),
    questions: Path = typer.Option(None, "--csv", help="Question file (default DIR/dpg_bench.csv)."),
    as_json: bool = typer.Option(False, "--json", help="Print one object: score, l1, l2, images, failed."),
):
    """Mini DPG-Bench: the rule checker answers every question on each crop; parent rule; score = 100 x mean."""
    from ..evaluation.dpg import score_dpg

    summary = score_dpg(directory, questions, progress=not as_json)
    if as_json:
        typer.echo(json.dumps(summary))
        return
    for name, value in summary["l1"].items():
        typer.echo(f"{name:<14} {value:6.2f}")
    typer.echo(f"{'DPG score':<14} {summary['score']:6.2f}   ({summary['images']} images, {summary['failed']} failed)")


@app.command()
@user_errors
def wise(
    prompts: list[Path] = typer.Option(..., "--prompts", help="Official WISE data/*.json files, or their folder."),
    out: Path = typer.Option(..., "--out", help="Output folder: one {prompt_id}.png per prompt."),
    batch_size: int = BATCH_OPT, seed: int = SEED_OPT, model: str = MODEL_OPT,
    steps: int = STEPS_OPT, cfg: float = CFG_OPT, decoder_steps: int = DECODER_STEPS_OPT,
    decoder_cfg: float = DECODER_CFG_OPT,
):
    """Generate WISE images (legacy protocol), resumably."""
    from ..evaluation.wise import generate_wise, load_prompts

    records = load_prompts(prompts)
    generate_wise(_pipeline(model), records, out, seed=seed, batch_size=batch_size,
                  sampling=_sampling(steps, cfg, decoder_steps, decoder_cfg))
    typer.echo(f"{len(records)} images in {out}")


@app.command("wise-score")
@user_errors
def wise_score(
    directory: Path = typer.Argument(..., help="Folder of {prompt_id}.png images."),
    prompts: list[Path] = typer.Option(..., "--prompts", help="The WISE JSON files the images were made from."),
    base_url: str = typer.Option(..., "--base-url", help="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1."),
    judge_model: str = typer.Option("gpt-4o-2024-05-13", "--judge-model", help="The judge model name."),
    api_key: str = typer.Option(None, "--api-key", envvar="OPENAI_API_KEY", help="Bearer key (or $OPENAI_API_KEY)."),
    workers: int = typer.Option(4, "--workers", help="Concurrent judge requests."),
    as_json: bool = typer.Option(False, "--json", help="Print one object: overall, categories, images, judged, unparsed."),
):
    """Judge WISE images: WiScore = (0.7 C + 0.2 R + 0.1 A) / 2, category-weighted overall; resumable."""
    from ..evaluation.wise import ChatJudge, JudgeError, judge_folder, load_prompts

    if not directory.is_dir():
        raise NotADirectoryError(f"{directory}: no such image folder")
    try:
        summary = judge_folder(directory, load_prompts(prompts), ChatJudge(base_url, judge_model, api_key),
                               workers=workers, progress=not as_json)
    except JudgeError as err:
        raise ValueError(f"judge failed ({err}); judgements so far are kept, rerun to resume") from None
    if as_json:
        typer.echo(json.dumps(summary))
        return
    for name, value in summary["categories"].items():
        typer.echo(f"{name:<10} {value:.3f}")
    typer.echo(f"{'overall':<10} {summary['overall']:.3f}   ({summary['judged']} judged, {summary['unparsed']} unparsed)")


@app.command()
@user_errors
def condition(
    model: str = MODEL_OPT,
    num: int = typer.Option(256, "--num", help="About how many prompts per probe (all of a smaller prompt space)."),
    seed: int = typer.Option(0, "--seed", help="Seeds the prompt split, the pair samples and the generator's noise."),
    batch_size: int = PAIR_BATCH_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print one object: probe, pair_difference, generator, prompts."),
):
    """How much of the prompt the generator's condition carries: linear probes, pair differences, DiT sensitivity."""
    from ..evaluation.condition import KINDS, chance_levels, condition_report

    if num < 1 or batch_size < 1:
        raise ValueError("--num and --batch-size must be at least 1")
    report = condition_report(_pipeline(model), num=num, seed=seed, batch_size=batch_size)
    if as_json:
        typer.echo(json.dumps(report))
        return
    chance = chance_levels()
    typer.echo(f"{'word':<10} {'probe':>7} {'chance':>7} {'pair diff':>10}")
    for kind in KINDS:
        probe, difference = report["probe"][kind], report["pair_difference"][kind]
        typer.echo(f"{kind:<10} {probe:7.4f} {chance[kind]:7.4f} {difference:10.4f}")
    generator = report["generator"]
    typer.echo(f"generator  prompt swap {generator['prompt_swap']:.4f}   "
               f"zero condition {generator['zero_condition']:.4f}")
    typer.echo(f"({report['prompts']} prompts through the backbone)")


@app.command()
@user_errors
def binding(
    model: str = MODEL_OPT,
    num: int = typer.Option(48, "--num", help="Prompt pairs per kind."),
    seed: int = typer.Option(0, "--seed", help="Seeds the pairs and the generator's noise."),
    batch_size: int = PAIR_BATCH_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print one object: generator, condition, pairs."),
):
    """Does the DiT bind words to objects? Its reaction to prompts of the same words rearranged (colours exchanged
    between objects, objects exchanged around a relation) beside a one-word change."""
    from ..evaluation.binding import binding_report, format_binding

    if num < 1 or batch_size < 1:
        raise ValueError("--num and --batch-size must be at least 1")
    report = binding_report(_pipeline(model), num=num, seed=seed, batch_size=batch_size)
    typer.echo(json.dumps(report) if as_json else format_binding(report))


@app.command()
@user_errors
def target(
    model: str = MODEL_OPT,
    num: int = typer.Option(1000, "--num", help="ShapesWorld training scenes whose object tokens are measured."),
    raw: bool = typer.Option(False, "--raw", help="The encoder's raw tokens instead of the DiT's (normalised) target."),
    as_json: bool = typer.Option(False, "--json", help="Print one object: {shape|color: {between_share, fisher}}."),
):
    """Does the DiT's target carry shape? Per-token class separability of the target encoder's object tokens."""
    from ..evaluation.target_probe import format_separability, target_separability

    if num < 1:
        raise ValueError("--num must be at least 1")
    encoder = _pipeline(model).model.target_encoder
    result = target_separability(encoder, num=num, target_space=not raw)
    typer.echo(json.dumps(result) if as_json else format_separability(result))


@app.command()
@user_errors
def vision(
    model: str = MODEL_OPT,
    num: int = typer.Option(1024, "--num", help="ShapesWorld training scenes the probes are fitted on."),
    num_test: int = typer.Option(256, "--num-test", help="Scenes per test split (eval, heldout)."),
    as_json: bool = typer.Option(False, "--json", help="Print one object: {shape|color|column|row: {eval, heldout}, train_scenes, "
                                 "test_scenes}."),
):
    """Does the vision tower see shapes, and where? Linear probes on its merged tokens, object tokens of unseen
    scenes: shape, colour, and the token's own grid column and row."""
    from ..evaluation.vision_probe import format_vision_probe, vision_probe

    if num < 1 or num_test < 1:
        raise ValueError("--num and --num-test must be at least 1")
    result = vision_probe(_pipeline(model).model.backbone, num=num, num_test=num_test)
    typer.echo(json.dumps(result) if as_json else format_vision_probe(result))


@app.command()
@user_errors
def chain(
    model: str = MODEL_OPT,
    seeds: int = typer.Option(2, "--seeds", help="Seeds per prompt (0..S-1, one shared noise per seed)."),
    num: int = typer.Option(1000, "--num", help="ShapesWorld training scenes the token probes are fitted on."),
    as_json: bool = typer.Option(False, "--json", help="Print one object: {tokens: {shape, color}, image: {shape, color, rule}, prompts, seeds, probe_scenes}."),
):
    """Where is a prompt's object lost: in the DiT's tokens (read by probes) or in the decoded image (by rule)?"""
    from ..evaluation.chain import chain_report, format_chain

    if seeds < 1 or num < 1:
        raise ValueError("--seeds and --num must be at least 1")
    report = chain_report(_pipeline(model), seeds=seeds, num=num)
    typer.echo(json.dumps(report) if as_json else format_chain(report))
