"""GenEval's decision rules, applied to detections: the include / exclude clauses and the position rule.

These follow `evaluation/evaluate_images.py` of the official GenEval repository: an include clause needs at
least `count` detections of its class; the colour test looks at the top-`count` detections by confidence;
the position test compares every object of the clause with every object of the target group; an exclude
clause fails the image when there are at least `count` detections (counting prompts exclude N+1, which
makes their counts exact). Only the detector differs: ours reads flat-coloured ShapesWorld pixels exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# GenEval's POSITION_THRESHOLD: each axis of the centre offset shrinks by this fraction of the two sizes.
POSITION_MARGIN = 0.1
# A relation holds when the shrunk offset, over the original offset's length, passes this on its axis.
RELATION_THRESHOLD = 0.5


@dataclass(frozen=True)
class Detection:
    """One detected object. `box` is (x0, y0, x1, y1) in pixels, x1/y1 exclusive."""

    shape: str
    color: str
    box: tuple[float, float, float, float]
    confidence: float


def relation_offsets(box_a, box_b) -> tuple[float, float] | None:
    """GenEval's normalised (dx, dy) of A relative to B after the size margin; None if they coincide."""
    ax0, ay0, ax1, ay1 = box_a
    bx0, by0, bx1, by1 = box_b
    offset = ((ax0 + ax1) / 2 - (bx0 + bx1) / 2, (ay0 + ay1) / 2 - (by0 + by1) / 2)
    dims = ((ax1 - ax0) + (bx1 - bx0), (ay1 - ay0) + (by1 - by0))
    revised = [
        max(abs(o) - POSITION_MARGIN * d, 0.0) * (1 if o > 0 else -1 if o < 0 else 0) for o, d in zip(offset, dims)
    ]
    if all(abs(r) < 1e-3 for r in revised):
        return None
    length = (offset[0] ** 2 + offset[1] ** 2) ** 0.5
    return revised[0] / length, revised[1] / length


def relative_position(box_a, box_b, threshold: float = RELATION_THRESHOLD) -> set[str]:
    """The relations that hold for A relative to B (y grows downward): a subset of GenEval's four."""
    offsets = relation_offsets(box_a, box_b)
    if offsets is None:
        return set()
    dx, dy = offsets
    relations = set()
    if dx < -threshold:
        relations.add("left of")
    if dx > threshold:
        relations.add("right of")
    if dy < -threshold:
        relations.add("above")
    if dy > threshold:
        relations.add("below")
    return relations


def evaluate(metadata: dict, detections: list[Detection]) -> tuple[bool, str]:
    """GenEval's `evaluate_image` on our detections: (correct, reason), reason empty when correct."""
    by_class: dict[str, list[Detection]] = {}
    for det in sorted(detections, key=lambda d: -d.confidence):
        by_class.setdefault(det.shape, []).append(det)
    correct = True
    reasons: list[str] = []
    matched_groups: list[list[Detection] | None] = []
    for req in metadata["include"]:
        name, count = req["class"], req["count"]
        found = by_class.get(name, [])[:count]
        matched = True
        if len(found) < count:
            correct = matched = False
            reasons.append(f"expected {name}>={count}, found {len(found)}")
        else:
            if "color" in req:
                colors = [d.color for d in found]
                if colors.count(req["color"]) < count:
                    correct = matched = False
                    seen = ", ".join(f"{colors.count(c)} {c}" for c in dict.fromkeys(colors))
                    reasons.append(
                        f"expected {req['color']} {name}>={count}, found {colors.count(req['color'])} "
                        f"{req['color']}; and {seen}"
                    )
            if "position" in req and matched:
                expected, group = req["position"]
                targets = matched_groups[group] if group < len(matched_groups) else None
                if targets is None:
                    correct = matched = False
                    reasons.append(f"no target for {name} to be {expected}")
                else:
                    for obj in found:
                        for target in targets:
                            true_relations = relative_position(obj.box, target.box)
                            if expected not in true_relations:
                                correct = matched = False
                                found_text = " and ".join(sorted(true_relations)) or "no relation to"
                                reasons.append(f"expected {name} {expected} target, found {found_text} target")
                                break
                        if not matched:
                            break
        matched_groups.append(found if matched else None)
    for req in metadata.get("exclude", []):
        name, count = req["class"], req["count"]
        if len(by_class.get(name, [])) >= count:
            correct = False
            reasons.append(f"expected {name}<{count}, found {len(by_class[name])}")
    return correct, "\n".join(reasons)


# What kind of mistake each reason line of `evaluate` names, in the order a fix should look at them: an object not
# drawn (or not recognisable) hides whether its colour or place would have been right. "no target" follows a
# target group that already failed, so it adds nothing of its own.
FAILURE_KINDS = ("missing", "extra", "colour", "relation")
_REASON_KINDS = (
    (re.compile(r"^expected \S+>=\d+, found \d+$"), "missing"),
    (re.compile(r"^expected \S+<\d+, found \d+$"), "extra"),
    (re.compile(r"^expected \S+ \S+>=\d+, found \d+ "), "colour"),
    (re.compile(r"^expected \S+ (left of|right of|above|below) target, found "), "relation"),
    (re.compile(r"^no target for "), None),
)
UNREADABLE = "unreadable"  # a reason `evaluate` did not write: the image could not be read (score.py)


def failure_kinds(reason: str) -> set[str]:
    """The kinds of mistake in one `evaluate` reason (empty for a correct image); UNREADABLE for any other text."""
    kinds: set[str] = set()
    for line in filter(None, reason.splitlines()):
        kind = next((k for pattern, k in _REASON_KINDS if pattern.match(line)), UNREADABLE)
        if kind is not None:
            kinds.add(kind)
    return kinds


def first_failure(reason: str) -> str | None:
    """The kind to fix first (FAILURE_KINDS order), None for a correct image."""
    kinds = failure_kinds(reason)
    return next((k for k in (*FAILURE_KINDS, UNREADABLE) if k in kinds), None)
