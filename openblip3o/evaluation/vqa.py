"""VQA accuracy: exact match after normalisation (lower case, no punctuation or articles, digits as words)."""

from __future__ import annotations

from collections import defaultdict

from ..data.shapes.text import COUNT_WORDS, is_named_count, normalize_answer


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


def vqa_heldout(pipe, num: int = 500, seed: int = 0, batch_size: int = 64, split: str = "heldout",
                lookup: bool = False) -> dict:
    """Answer every VQA pair of `num` ShapesWorld scenes of `split` ("heldout": compositions never trained on;
    "eval": unseen scenes of seen compositions); exact-match accuracy by question type. lookup: also the
    `lookup_report` of the colour and shape questions (key "lookup") and the `named_count_report` (key
    "named_count")."""
    from ..data.shapes import ShapesWorld

    world = ShapesWorld(split, seed)
    images, questions, answers, types, scenes = [], [], [], [], []
    for index in range(num):
        example = world[index]
        for qa in example.annotation["vqa"]:
            images.append(example.image)
            questions.append(qa["question"])
            answers.append(qa["answer"])
            types.append(qa["type"])
            scenes.append(example.scene)
    predictions = []
    for first in range(0, len(questions), batch_size):
        predictions += pipe.answer(images[first : first + batch_size], questions[first : first + batch_size])
    result = vqa_accuracy(predictions, answers, types)
    if lookup:
        result["lookup"] = lookup_report(predictions, questions, types, scenes)
        result["named_count"] = named_count_report(predictions, questions, answers, types)
    return result


LOOKUP_ATTRIBUTE = {"color": "color", "shape": "shape"}  # question type -> the attribute its answer names


def lookup_report(predictions: list[str], questions: list[str], types: list[str], scenes: list) -> dict:
    """Colour and shape questions about a scene where another object's answer would differ ("what shape is the red
    object?" beside a blue star): the question can only be answered by finding the object it names.

    Returns {type: {"accuracy", "other_object", "questions"}}: exact-match accuracy on those questions, and the share
    answered with another object's colour or shape instead (the mark of a lookup that fails: the model read the
    scene, not the object named). Types with no such question are left out."""
    from ..data.shapes.question_targets import named_objects

    hits: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for prediction, question, kind, scene in zip(predictions, questions, types, scenes):
        attribute = LOOKUP_ATTRIBUTE.get(kind)
        named = named_objects(question, scene) if attribute else []
        if len(named) != 1:
            continue
        answer = getattr(scene.objects[named[0]], attribute)
        others = {getattr(o, attribute) for i, o in enumerate(scene.objects) if i != named[0]} - {answer}
        if others:
            said = normalize_answer(prediction)
            hits[kind].append((said == normalize_answer(answer), said in {normalize_answer(o) for o in others}))
    return {kind: {"accuracy": sum(h for h, _ in rows) / len(rows), "other_object": sum(o for _, o in rows) / len(rows),
                   "questions": len(rows)} for kind, rows in sorted(hits.items())}


def named_count_report(predictions: list[str], questions: list[str], answers: list[str], types: list[str]) -> dict:
    """"how many <shape>s are there?", split by whether the scene holds that shape: most such questions are about a
    shape it lacks, so the count type's accuracy hides a model that answers "zero" whatever it sees (measured: 0.90
    for the count type while "how many circles?" beside one circle was right 10 / 40).

    Returns {"present": {"accuracy", "questions"}, "absent": {"accuracy", "questions"}}; a side with no question is
    left out."""
    absent = normalize_answer(COUNT_WORDS[0])
    sides: dict[str, list[bool]] = defaultdict(list)
    for prediction, question, answer, kind in zip(predictions, questions, answers, types):
        if is_named_count({"type": kind, "question": question}):
            side = "absent" if normalize_answer(answer) == absent else "present"
            sides[side].append(normalize_answer(prediction) == normalize_answer(answer))
    return {side: {"accuracy": sum(hits) / len(hits), "questions": len(hits)} for side, hits in sorted(sides.items())}
