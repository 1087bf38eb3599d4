"""VQA accuracy: exact match after normalisation (lower case, no punctuation or articles, digits as words)."""

from __future__ import annotations

from collections import defaultdict

from ..data.shapes.text import normalize_answer


def vqa_accuracy(predictions: list[str], answers: list[str], types: list[str] | None = None) -> dict:
    """{"accuracy": float, "by_type": {type: float}, "questions": int}."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers")
    if not answers:
        raise ValueError("no questions to score")
    types = types or ["all"] * len(answers)
    hits = [normalize_answer(p) == normalize_answer(a) for p, a in zip(predictions, answers)]
    by_type: dict[str, list[bool]] = defaultdict(list)
    for kind, hit in zip(types, hits):
        by_type[kind].append(hit)
    return {
        "accuracy": sum(hits) / len(hits),
        "by_type": {k: sum(v) / len(v) for k, v in sorted(by_type.items())},
        "questions": len(hits),
    }


def vqa_heldout(pipe, num: int = 500, seed: int = 0, batch_size: int = 64, split: str = "heldout") -> dict:
    """Answer every VQA pair of `num` ShapesWorld scenes of `split` ("heldout": compositions never trained on;
    "eval": unseen scenes of seen compositions); exact-match accuracy by question type."""
    from ..data.shapes import ShapesWorld

    world = ShapesWorld(split, seed)
    images, questions, answers, types = [], [], [], []
    for index in range(num):
        example = world[index]
        for qa in example.annotation["vqa"]:
            images.append(example.image)
            questions.append(qa["question"])
            answers.append(qa["answer"])
            types.append(qa["type"])
    predictions = []
    for first in range(0, len(questions), batch_size):
        predictions += pipe.answer(images[first : first + batch_size], questions[first : first + batch_size])
    return vqa_accuracy(predictions, answers, types)
