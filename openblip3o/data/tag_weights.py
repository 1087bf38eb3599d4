"""Per-tag sampling weights from per-tag scores: the instruct set and curation both draw more of what the model
does worst (BLIP3o-60k targeted the base model's weak areas the same way)."""

from __future__ import annotations

from .shapes.prompts import TAGS

WEIGHT_FLOOR = 0.05  # a tag the model already masters still gets a few examples


def tag_weights(scores: dict[str, float] | None) -> dict[str, float]:
    """Per-tag sampling weights: (1 - score) + floor, uniform when no scores are known."""
    if not scores:
        return {tag: 1.0 for tag in TAGS}
    return {tag: max(0.0, 1.0 - scores.get(tag, 0.0)) + WEIGHT_FLOOR for tag in TAGS}
