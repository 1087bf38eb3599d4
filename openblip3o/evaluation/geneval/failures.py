"""Why mini GenEval images fail, from `eval score`'s per-image results: which stage a tag's misses point at.

A tag's score alone does not say what to fix. A position prompt fails when an object is not drawn (the generator
or the decoder's shapes) or when both are drawn on the wrong sides (the relation is not followed); a color_attr
prompt when a shape is missing or when the colours sit on the wrong objects (binding). Each failed image counts
once, under its first kind (`rules.FAILURE_KINDS` order). Conditional scores isolate the words a generator must
follow once the objects are there (`when_drawn`): per tag that names a relation or colours, the accuracy among its
images whose only mistake, if any, is of that kind. With both objects drawn, a generator that ignores the relation
word scores about 0.5 on position (one of two sides); one that does not bind colours to objects about 0.5 on
color_attr; below that, it follows something else (on held-out prompts: the arrangements and colour-shape pairs
seen in training).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

from ...data.shapes.prompts import TAGS
from ...data.shapes.rules import FAILURE_KINDS, UNREADABLE, failure_kinds, first_failure
from .score import RESULTS_FILE

# tag -> the kind of mistake that remains once its objects are drawn: what the conditional score isolates
WORD_KINDS = {"colors": "colour", "position": "relation", "color_attr": "colour"}


def read_results(path: str | Path) -> list[dict]:
    """The rows of an `eval score` results file (a folder means its results.jsonl)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results; score the folder first (`openblip3o eval score DIR`)")
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append({"tag": str(row["tag"]), "correct": bool(row["correct"]), "reason": str(row.get("reason", ""))})
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{line_no}: not a results row with 'tag', 'correct' and 'reason' ({err})") \
                from None
    return rows


def _when_drawn(rows: list[dict], kind: str) -> dict:
    """Accuracy among `rows` that are correct or whose only mistake is `kind` (None when there are none)."""
    eligible = [r for r in rows if failure_kinds(r["reason"]) <= {kind}]
    right = sum(r["correct"] for r in eligible)
    return {"kind": kind, "accuracy": right / len(eligible) if eligible else None, "images": len(eligible)}


def failure_breakdown(rows: list[dict]) -> dict:
    """{"tags": {tag: {"images", "correct", <kind>: share of the tag's images}}, "when_drawn": {tag: {"kind",
    "accuracy", "images"}} for the tags of WORD_KINDS present, "images"}: every tag's shares sum to 1."""
    by_tag: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_tag[row["tag"]].append(row)
    order = [t for t in TAGS if t in by_tag] + sorted(t for t in by_tag if t not in TAGS)
    tags = {}
    for tag in order:
        group = by_tag[tag]
        counts = Counter("correct" if r["correct"] else first_failure(r["reason"]) or UNREADABLE for r in group)
        shares = {k: counts[k] / len(group) for k in ("correct", *FAILURE_KINDS, UNREADABLE)}
        tags[tag] = {"images": len(group)} | shares
    when_drawn = {tag: _when_drawn(by_tag[tag], kind) for tag, kind in WORD_KINDS.items() if tag in by_tag}
    return {"tags": tags, "when_drawn": when_drawn, "images": len(rows)}
