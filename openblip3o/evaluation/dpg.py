"""DPG-Bench: the official generation layout, and a mini analogue on ShapesWorld scored by rule.

Official layout (TencentQQGYLab/ELLA `dpg_bench/`): one dense prompt per `prompts/<item_id>.txt`; four images per
prompt tiled 2x2 and saved as `<item_id>.png`. The official score asks mPLUG-large one yes/no question per tuple of
`dpg_bench.csv` on each crop; a child question counts only if all its parents (`dependency`) passed; crop = mean
over questions, image = mean over its 4 crops, score = 100 x mean over images.

The mini analogue: the prompts are the long captions of held-out ShapesWorld scenes; each has a question graph
in DPG's tuple categories (entity / attribute / relation / global / other) with `dependency` parents, and every
question carries a machine check (`check` column, JSON) that the ShapesWorld detector answers exactly.
Unlike the official script (which drops the CSV's first row and breaks down by the last crop's pre-dependency
scores), the L1/L2 breakdown here is over all crops, after the parent rule.
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import SamplingSettings
from ..data.shapes import ShapesWorld, WorldConfig
from ..data.shapes.rules import relative_position
from ..data.shapes.text import CLEAR_RELATION, long_caption, place_phrase
from ..data.shapes.world import COUNT_WORDS, PLACE_NAMES, RELATIONS, SHAPES, article, plural
from .geneval.detector import DetectorConfig, detect

CSV_FILE = "dpg_bench.csv"
PROMPTS_DIR = "prompts"
RESULTS_FILE = "dpg_results.jsonl"
SUMMARY_FILE = "dpg_summary.json"
SETTINGS_FILE = "settings.json"
CSV_COLUMNS = ("item_id", "text", "keywords", "proposition_id", "dependency", "category_broad",
               "category_detailed", "tuple", "question_natural_language", "check")
GRID_SIDE = 2  # the official 2x2 tiling
N_SAMPLES = GRID_SIDE * GRID_SIDE
MINI_ITEM_PREFIX = "shapes"
MINI_DEFAULT_ITEMS = 100
BACKGROUND_SHARE = 0.5  # "is the background black?" holds when at least this share of pixels is background
SCORE_SCALE = 100.0


# --- the mini question graph ------------------------------------------------------------------------------------
def _size_threshold(config: WorldConfig) -> float:
    """Radius (as a fraction of the side) between the largest small object and the smallest large one."""
    return (config.small_radius[1] + config.large_radius[0]) / 2


def question_graph(scene) -> list[dict]:
    """DPG-style propositions for a scene: id, parents, categories, tuple, question and a rule `check`."""
    rows: list[dict] = []

    def add(parents, broad, detailed, tuple_args, question, check) -> int:
        pid = len(rows) + 1
        rows.append({"proposition_id": pid, "dependency": ",".join(map(str, parents)) or "0",
                     "category_broad": broad, "category_detailed": detailed,
                     "tuple": f"{broad} - {detailed} ({', '.join(tuple_args)})",
                     "question_natural_language": question, "check": check})
        return pid

    add([], "global", "background", ["background", "black"], "is the background black?", {"op": "background"})
    objects = sorted(scene.objects, key=lambda o: (o.cy, o.cx))
    counts = Counter(o.shape for o in objects)
    entity = {}
    for shape in SHAPES:
        if counts[shape]:
            entity[shape] = add([], "entity", "whole", [shape], f"is there {article(shape)} {shape}?",
                                {"op": "entity", "shape": shape})
            n = counts[shape]
            noun = shape if n == 1 else plural(shape)
            verb = "is there" if n == 1 else "are there"
            add([entity[shape]], "other", "count", [noun, f"=={n}"], f"{verb} exactly {COUNT_WORDS[n]} {noun}?",
                {"op": "count", "shape": shape, "n": n})
    color_pid = {}
    for obj in objects:
        key = (obj.color, obj.shape)
        if key not in color_pid:
            color_pid[key] = add([entity[obj.shape]], "attribute", "color", [obj.shape, obj.color],
                                 f"is there {article(obj.color)} {obj.color} {obj.shape}?",
                                 {"op": "color", "shape": obj.shape, "color": obj.color})
        name = f"{obj.color} {obj.shape}"
        add([color_pid[key]], "attribute", "size", [name, obj.size], f"is there {article(obj.size)} {obj.size} {name}?",
            {"op": "size", "shape": obj.shape, "color": obj.color, "size": obj.size})
        place = obj.place(scene.image_size)
        add([color_pid[key]], "relation", "spatial", [name, "image", place], f"is the {name} {place_phrase(place)}?",
            {"op": "place", "shape": obj.shape, "color": obj.color, "place": place})
    described = Counter((o.color, o.shape) for o in objects)
    nameable = [o for o in objects if described[(o.color, o.shape)] == 1]
    for i, a in enumerate(nameable):
        for b in nameable[i + 1:]:
            clear = relative_position(a.box, b.box, threshold=CLEAR_RELATION)
            rel = next((r for r in RELATIONS if r in clear), None)
            if rel is None:
                continue
            na, nb = f"{a.color} {a.shape}", f"{b.color} {b.shape}"
            add([color_pid[(a.color, a.shape)], color_pid[(b.color, b.shape)]], "relation", "spatial", [na, nb, rel],
                f"is the {na} {rel} the {nb}?",
                {"op": "relation", "a": [a.shape, a.color], "rel": rel, "b": [b.shape, b.color]})
    return rows


def mini_items(num: int = MINI_DEFAULT_ITEMS, seed: int = 0) -> list[dict]:
    """`num` held-out scenes as DPG items: {"item_id", "text", "rows"}."""
    if num < 1:
        raise ValueError("the mini DPG set needs at least one item")
    world = ShapesWorld("heldout", seed)
    items = []
    for index in range(num):
        scene = world.scene(index)
        items.append({"item_id": f"{MINI_ITEM_PREFIX}{index:05d}", "text": long_caption(scene),
                      "rows": question_graph(scene), "scene": scene})
    return items


def write_mini_prompts(root: str | Path, num: int = MINI_DEFAULT_ITEMS, seed: int = 0) -> dict[str, str]:
    """Write `root/prompts/<item_id>.txt` and `root/dpg_bench.csv` (official columns + `check`)."""
    root = Path(root)
    (root / PROMPTS_DIR).mkdir(parents=True, exist_ok=True)
    prompts = {}
    with (root / CSV_FILE).open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for item in mini_items(num, seed):
            (root / PROMPTS_DIR / f"{item['item_id']}.txt").write_text(item["text"] + "\n", encoding="utf-8")
            prompts[item["item_id"]] = item["text"]
            for row in item["rows"]:
                writer.writerow({**row, "item_id": item["item_id"], "text": item["text"], "keywords": "",
                                 "check": json.dumps(row["check"])})
    return prompts


def read_prompts(directory: str | Path) -> dict[str, str]:
    """`<item_id>.txt` files of a folder (or of its `prompts/` sub-folder), sorted by item id."""
    directory = Path(directory)
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory}: not a folder of <item_id>.txt prompt files")
    if not any(directory.glob("*.txt")) and (directory / PROMPTS_DIR).is_dir():
        directory = directory / PROMPTS_DIR
    prompts = {p.stem: p.read_text(encoding="utf-8").strip() for p in sorted(directory.glob("*.txt"))}
    if not prompts:
        raise FileNotFoundError(f"{directory}: no <item_id>.txt prompt files")
    empty = [k for k, v in prompts.items() if not v]
    if empty:
        raise ValueError(f"{directory / (empty[0] + '.txt')}: empty prompt")
    return prompts


# --- generation --------------------------------------------------------------------------------------------------
def generate_dpg(pipe, prompts: dict[str, str], out_dir: str | Path, seed: int = 42, batch_size: int = 16,
                 sampling: SamplingSettings = SamplingSettings(), progress: bool = True) -> dict:
    """Write `<item_id>.png` (2x2 grid of 4 samples, sample j seeded seed + j) for every prompt; resumable."""
    from diffusers.utils import make_image_grid
    from tqdm import tqdm

    from .geneval.generate import resolved_sampling, run_settings

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"benchmark": "dpg", **run_settings(pipe, seed, len(prompts), sampling),
                "n_samples": N_SAMPLES}
    (out / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    todo = [k for k in prompts if not (out / f"{k}.png").is_file()]
    per_batch = max(1, batch_size // N_SAMPLES)
    for first in tqdm(range(0, len(todo), per_batch), desc="dpg", unit="batch", disable=not progress):
        keys = todo[first : first + per_batch]
        images = pipe([prompts[k] for k in keys for _ in range(N_SAMPLES)],
                      generator=[torch.Generator().manual_seed(seed + j) for _ in keys for j in range(N_SAMPLES)],
                      **resolved_sampling(settings), progress=False).images
        for n, key in enumerate(keys):
            grid = make_image_grid(images[n * N_SAMPLES : (n + 1) * N_SAMPLES], GRID_SIDE, GRID_SIDE)
            tmp = out / f".{key}.png.tmp"
            grid.save(tmp, format="PNG")
            tmp.replace(out / f"{key}.png")
    return settings


# --- scoring -----------------------------------------------------------------------------------------------------
def crops(image: Image.Image) -> list[Image.Image]:
    """The 4 samples of a 2x2 grid, row by row."""
    w, h = image.size[0] // GRID_SIDE, image.size[1] // GRID_SIDE
    return [image.crop((c * w, r * h, (c + 1) * w, (r + 1) * h)) for r in range(GRID_SIDE) for c in range(GRID_SIDE)]


def _place(box, side: int) -> str:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return PLACE_NAMES[min(2, int(3 * cy // side))][min(2, int(3 * cx // side))]


def answer_check(check: dict, detections: list, image: np.ndarray, world: WorldConfig | None = None,
                 detector: DetectorConfig | None = None) -> bool:
    """The rule checker's yes/no for one question on one crop (`image` is its HxWx3 uint8 array)."""
    world, detector = world or WorldConfig(), detector or DetectorConfig()
    op, side = check["op"], image.shape[1]

    def matching(shape, color=None):
        return [d for d in detections if d.shape == shape and (color is None or d.color == color)]

    if op == "background":
        distance = np.abs(image.astype(np.int16) - np.array(detector.background, dtype=np.int16)).max(axis=-1)
        return bool((distance <= detector.foreground_threshold).mean() >= BACKGROUND_SHARE)
    if op == "entity":
        return bool(matching(check["shape"]))
    if op == "count":
        return len(matching(check["shape"])) == check["n"]
    if op == "color":
        return bool(matching(check["shape"], check["color"]))
    if op == "size":
        threshold = _size_threshold(world) * side
        return any((max(d.box[2] - d.box[0], d.box[3] - d.box[1]) / 2 >= threshold) == (check["size"] == "large")
                   for d in matching(check["shape"], check["color"]))
    if op == "place":
        return any(_place(d.box, side) == check["place"] for d in matching(check["shape"], check["color"]))
    if op == "relation":
        return any(check["rel"] in relative_position(a.box, b.box)
                   for a in matching(*check["a"]) for b in matching(*check["b"]))
    raise ValueError(f"unknown check op {op!r}")


def read_questions(csv_path: str | Path) -> dict[str, list[dict]]:
    """Rows of a `dpg_bench.csv` grouped by item id; the mini `check` column is required for rule scoring."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: no such question file")
    items: dict[str, list[dict]] = defaultdict(list)
    with csv_path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if "check" not in (reader.fieldnames or []):
            raise ValueError(f"{csv_path}: no 'check' column: the official DPG-Bench needs its mPLUG scorer "
                             "(compute_dpg_bench.py); the rule scorer reads only the mini set")
        for line_no, row in enumerate(reader, start=2):
            try:
                row["check"] = json.loads(row["check"])
                row["proposition_id"] = int(row["proposition_id"])
                row["parents"] = [int(p) for p in str(row["dependency"]).split(",") if p.strip() and int(p) != 0]
            except (ValueError, TypeError) as err:
                raise ValueError(f"{csv_path}:{line_no}: bad row ({err})") from None
            items[row["item_id"]].append(row)
    return dict(items)


def apply_parent_rule(raw: dict[int, float], parents: dict[int, list[int]]) -> dict[int, float]:
    """A child scores 0 when any of its parents answered no (raw answers, as DSG / DPG do)."""
    return {pid: 0.0 if any(raw.get(p, 1.0) == 0 for p in parents.get(pid, [])) else score
            for pid, score in raw.items()}


def score_dpg(root: str | Path, csv_path: str | Path | None = None, progress: bool = True) -> dict:
    """Score every `<item_id>.png` of the CSV; writes dpg_results.jsonl + dpg_summary.json; returns the summary.

    A missing or unreadable image scores 0 (the official script silently drops it; we count it, with a reason).
    """
    from tqdm import tqdm

    root = Path(root)
    questions = read_questions(Path(csv_path) if csv_path else root / CSV_FILE)
    rows, by_l1, by_l2 = [], defaultdict(list), defaultdict(list)
    for item_id, qs in tqdm(questions.items(), desc="dpg scoring", unit="img", disable=not progress):
        path = root / f"{item_id}.png"
        try:
            image = Image.open(path).convert("RGB")
        except (OSError, ValueError) as err:
            rows.append({"item_id": item_id, "score": 0.0, "crops": [], "error": f"{path.name}: {err}"})
            continue
        parents = {q["proposition_id"]: q["parents"] for q in qs}
        crop_scores = []
        for crop in crops(image):
            array = np.asarray(crop)
            detections, _ = detect(array)
            raw = {q["proposition_id"]: float(answer_check(q["check"], detections, array)) for q in qs}
            final = apply_parent_rule(raw, parents)
            for q in qs:
                by_l1[q["category_broad"]].append(final[q["proposition_id"]])
                by_l2[f"{q['category_broad']}-{q['category_detailed']}"].append(final[q["proposition_id"]])
            crop_scores.append(sum(final.values()) / len(final))
        rows.append({"item_id": item_id, "score": sum(crop_scores) / len(crop_scores), "crops": crop_scores})
    if not rows:
        raise ValueError(f"{root}: no DPG items to score")
    with (root / RESULTS_FILE).open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    summary = {
        "score": SCORE_SCALE * sum(r["score"] for r in rows) / len(rows),
        "l1": {k: SCORE_SCALE * sum(v) / len(v) for k, v in sorted(by_l1.items())},
        "l2": {k: SCORE_SCALE * sum(v) / len(v) for k, v in sorted(by_l2.items())},
        "images": len(rows), "failed": sum(1 for r in rows if "error" in r),
    }
    (root / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
