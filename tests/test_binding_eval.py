"""`openblip3o eval binding`: a bag-of-words condition cannot tell rearranged prompts apart, one that reads word
order can; the pairs are what they claim; the CLI on the shipped model."""

import json
import random

import torch
from test_condition_eval import QUERIES, FakeModel, WordBackbone
from typer.testing import CliRunner

from openblip3o.cli import app
from openblip3o.evaluation.binding import BINDING_KINDS, binding_pairs, binding_report

NUM = 12


class OrderedWordBackbone(WordBackbone):
    """Each word's embedding scaled by its position: the same words in another order give another condition."""

    def condition(self, prompts):
        cond = torch.stack([sum((i + 1) * self.embedding(word) for i, word in enumerate(prompt.split()))
                            for prompt in prompts])
        return cond, torch.ones(len(prompts), QUERIES, dtype=torch.long)


def test_swapped_pairs_hold_the_same_words_and_changed_pairs_one_other_word():
    rng = random.Random(0)
    for kind in BINDING_KINDS:
        for a, b in binding_pairs(kind, 20, rng):
            assert a != b
            if kind.endswith("swap"):
                assert sorted(a.split()) == sorted(b.split()), (a, b)
            else:
                assert sum(x != y for x, y in zip(a.split(), b.split())) >= 1
                assert sorted(a.split()) != sorted(b.split())


def test_a_bag_of_words_condition_reacts_to_changes_but_not_to_swaps():
    report = binding_report(FakeModel(WordBackbone()), num=NUM)
    assert set(report["generator"]) == set(report["condition"]) == set(BINDING_KINDS) and report["pairs"] == NUM
    for swap in ("attribute_swap", "order_swap"):
        assert report["generator"][swap] < 1e-5 and report["condition"][swap] < 1e-6, report
    for change in ("attribute_change", "relation_change"):
        assert report["generator"][change] > 0.01 and report["condition"][change] > 0.01, report


def test_a_condition_that_reads_word_order_reacts_to_swaps():
    report = binding_report(FakeModel(OrderedWordBackbone()), num=NUM)
    for swap in ("attribute_swap", "order_swap"):
        assert report["generator"][swap] > 0.01 and report["condition"][swap] > 0.01, report


def test_cli_on_the_shipped_model():
    result = CliRunner().invoke(app, ["eval", "binding", "--num", "8", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report) == {"generator", "condition", "pairs"}
    assert all(value >= 0 for part in ("generator", "condition") for value in report[part].values())
    assert report["generator"]["attribute_change"] > 0.05  # the shipped DiT follows one changed colour word
