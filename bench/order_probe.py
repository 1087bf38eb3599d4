"""Does the condition say which object a relation puts where? Probes on prompts with the same words in either order.

    python bench/order_probe.py [MODEL] [--ridge 10]

"a photo of a circle left of a square" and "a photo of a square left of a circle" hold the same bag of words, so only
an ordered reading can tell them apart. For every pair of the six shapes, both noun orders and GenEval's four
relations (120 prompts), a linear probe (kernel ridge, linear kernel, standardised features) is fitted on the
condition and scored leaving one shape pair out (the probe never saw the test pair), choosing between the
prompt's two shapes, for two labels:
  * noun order: which shape is named first (what a causal reading keeps);
  * layout: which shape lies left of / above the other (the order resolved through the relation word: what the DiT
    must draw; it flips with the relation's direction, so a linear probe on features that hold the order and the
    relation separately scores below what a non-linear reader gets).
Features: the condition's query part (mean over the queries, and all of them flat), the raw query states, and the
word part (the prompt's token embeddings, mean over real tokens: a bag of words, so 0.5 on both by construction).
Measured 2026-12-05 on the shipped mini model (≈1 min): noun order 0.958 (query part, mean) / 1.000 (flat) / 1.000
(raw states) / 0.500 (word part); layout 0.542 / 0.800 / 0.758 / 0.500. Which noun came first is in the query part,
and most of the layout; the DiT draws which object goes where at chance (`bench/place_words.py`): it reads the word
part.
"""
import argparse
import itertools

import numpy as np
import torch

from openblip3o.data.shapes import SHAPES
from openblip3o.inference.pipeline import BLIP3oPipeline

RELATIONS = {"left of": True, "right of": False, "above": True, "below": False}  # the first named is left / top


def prompts_and_labels() -> tuple[list[str], dict[str, np.ndarray], np.ndarray]:
    """The prompts; per label the index (into SHAPES) of the shape it names; each prompt's pair (2 indices)."""
    prompts, first_named, left_or_top, pairs = [], [], [], []
    for a, b in itertools.combinations(range(len(SHAPES)), 2):
        for first, second in ((a, b), (b, a)):
            for relation, first_left_or_top in RELATIONS.items():
                prompts.append(f"a photo of a {SHAPES[first]} {relation} a {SHAPES[second]}")
                first_named.append(first)
                left_or_top.append(first if first_left_or_top else second)
                pairs.append((a, b))
    labels = {"noun order": np.array(first_named), "layout": np.array(left_or_top)}
    return prompts, labels, np.array(pairs)


def leave_one_pair_out(features: np.ndarray, labels: np.ndarray, pairs: np.ndarray, ridge: float) -> float:
    """Accuracy of a one-vs-rest ridge probe for the named shape, choosing between the prompt's two shapes, each
    shape pair held out in turn (so the probe reads "which noun came first", not the pair)."""
    x = (features - features.mean(0)) / (features.std(0) + 1e-6)
    targets = 2.0 * np.eye(len(SHAPES))[labels] - 1  # (N, shapes) one-vs-rest
    keys = [tuple(p) for p in pairs]
    correct = 0
    for held in sorted(set(keys)):
        test = np.array([k == held for k in keys])
        train = ~test
        alpha = np.linalg.solve(x[train] @ x[train].T + ridge * np.eye(train.sum()), targets[train])  # dual ridge
        scores = x[test] @ (x[train].T @ alpha)  # (n_test, shapes)
        chosen = np.where(scores[:, held[0]] >= scores[:, held[1]], held[0], held[1])
        correct += int((chosen == labels[test]).sum())
    return correct / len(labels)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="mini")
    parser.add_argument("--ridge", type=float, default=10.0)
    args = parser.parse_args()
    backbone = BLIP3oPipeline.from_pretrained(args.model).model.backbone.eval()
    prompts, labels, pairs = prompts_and_labels()
    with torch.no_grad():
        condition, mask = backbone.condition(prompts)
        states, _ = backbone.query_states(prompts)
    queries = condition[:, -backbone.num_queries:]
    features = {"query part, mean": queries.mean(1), "query part, flat": queries.flatten(1),
                "raw query states, flat": states.flatten(1)}
    if condition.shape[1] > backbone.num_queries:  # a word part precedes the queries
        words, word_mask = condition[:, :-backbone.num_queries], mask[:, :-backbone.num_queries, None]
        features["word part, mean"] = (words * word_mask).sum(1) / word_mask.sum(1)
    for label, values in labels.items():
        scores = {name: leave_one_pair_out(f.float().numpy(), values, pairs, args.ridge)
                  for name, f in features.items()}
        print(f"{label:<11} " + "  ".join(f"{name} {score:.3f}" for name, score in scores.items()))
    print(f"({len(prompts)} prompts, leave one of {len({tuple(p) for p in pairs})} shape pairs out; chance 0.5)")


if __name__ == "__main__":
    main()
