"""The mini GenEval: score a GenEval-layout folder of ShapesWorld images from their pixels alone."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from ...data.shapes.prompts import TAGS, validate_record
from ...data.shapes.rules import evaluate
from .detector import DetectorConfig, detect
from .layout import MetadataError, iter_layout

RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"


def score_image(metadata: dict, image, config: DetectorConfig | None = None) -> tuple[bool, str, list]:
    detections, blobs = detect(image, config)
    correct, reason = evaluate(metadata, detections)
    return correct, reason, detections


def summarize(rows: list[dict]) -> dict:
    """GenEval's `summary_scores.py`: per-tag mean of `correct`; overall = unweighted mean of the tag means."""
    by_tag: dict[str, list[bool]] = defaultdict(list)
    for row in rows:
        by_tag[row["tag"]].append(bool(row["correct"]))
    order = [t for t in TAGS if t in by_tag] + sorted(t for t in by_tag if t not in TAGS)
    tags = {t: sum(by_tag[t]) / len(by_tag[t]) for t in order}
    overall = sum(tags.values()) / len(tags) if tags else 0.0
    return {"overall": overall, "tags": tags, "images": len(rows)}


def score_folder(root: str | Path, results_path: str | Path | None = None, progress: bool = True,
                 config: DetectorConfig | None = None) -> dict:
    """Score every image under `root`; write one JSONL row per image; return the summary.

    Unreadable images and folders without samples count as failed rows with their reason.
    """
    root = Path(root)
    results_path = Path(results_path) if results_path else root / RESULTS_FILE
    rows = []
    checked: set[str] = set()
    for item in tqdm(iter_layout(root), desc="scoring", unit="img", disable=not progress):
        meta_file = str(item.folder / "metadata.jsonl")
        if meta_file not in checked:
            try:
                validate_record(item.metadata)
            except ValueError as err:
                raise MetadataError(f"{meta_file}:1: {err}") from None
            checked.add(meta_file)
        row = {"filename": item.filename, "tag": item.metadata["tag"], "prompt": item.metadata.get("prompt", "")}
        if item.image is None:
            row |= {"correct": False, "reason": item.error, "detections": []}
        else:
            correct, reason, detections = score_image(item.metadata, item.image, config)
            row |= {"correct": correct, "reason": reason, "detections": [asdict(d) for d in detections]}
        rows.append(row | {"metadata": item.metadata})
    results_path.parent.mkdir(parents=True, exist_ok=True)
    with results_path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    summary = summarize(rows)
    (results_path.parent / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
