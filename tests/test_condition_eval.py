"""`openblip3o eval condition`: the probe, the report on fake backbones that carry nothing or every word, the CLI."""

import json
import random
import zlib

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from openblip3o.cli import app
from openblip3o.config import GeneratorConfig
from openblip3o.data.shapes.world import SHAPES, plural
from openblip3o.evaluation.condition import (
    KINDS,
    chance_levels,
    condition_report,
    labelled_prompts,
    probe_accuracy,
    split_prompts,
)
from openblip3o.models.generator import Generator
from openblip3o.objectives import FlowMatching

QUERIES, WIDTH = 8, 32  # the fake condition: (B, 8, 32)
CHANNELS, GRID = 4, 2  # the fake DiT's token grid
MARGIN = 0.15  # how far above chance a probe of unrelated features may land
NUM = 64


class ConstantBackbone:
    """A condition that ignores the prompt."""

    num_queries = QUERIES

    def __init__(self):
        self.value = torch.randn(QUERIES, WIDTH, generator=torch.Generator().manual_seed(0))

    def condition(self, prompts):
        return self.value.expand(len(prompts), -1, -1).clone(), torch.ones(len(prompts), QUERIES, dtype=torch.long)


class WordBackbone:
    """A condition that is the sum of one fixed random (N, D) embedding per word (plurals read as their singular)."""

    singular = {plural(shape): shape for shape in SHAPES}
    num_queries = QUERIES

    def embedding(self, word: str) -> torch.Tensor:
        seed = zlib.crc32(self.singular.get(word, word).encode())
        return torch.randn(QUERIES, WIDTH, generator=torch.Generator().manual_seed(seed))

    def condition(self, prompts):
        cond = torch.stack([sum(self.embedding(word) for word in prompt.split()) for prompt in prompts])
        return cond, torch.ones(len(prompts), QUERIES, dtype=torch.long)


class FakeModel(nn.Module):
    """What `condition_report` reads of a BLIP3oModel: backbone.condition, a tiny real DiT, objective, token_shape."""

    token_shape = (CHANNELS, GRID, GRID)

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        torch.manual_seed(0)
        self.generator = Generator(GeneratorConfig(hidden_size=32, num_layers=1, num_attention_heads=2, num_kv_heads=2),
                                   CHANNELS, GRID, WIDTH)
        # Lumina's cross-attention gate starts at zero; open it so the condition reaches the output.
        with torch.no_grad():
            for name, parameter in self.generator.named_parameters():
                if name.endswith("gate"):
                    parameter.fill_(1.0)
        self.objective = FlowMatching()


def test_probe_is_at_chance_on_unrelated_features_and_reads_an_encoded_label():
    classes, rows, dims = 4, 200, 2000
    g = torch.Generator().manual_seed(0)
    train_y, test_y = torch.arange(rows) % classes, torch.arange(rows) % classes
    train_x, test_x = torch.randn(rows, dims, generator=g), torch.randn(rows, dims, generator=g)
    assert probe_accuracy(train_x, train_y, test_x, test_y) <= 1 / classes + MARGIN
    # The label as a one-hot plus noise, mixed into many random dimensions.
    mixing = torch.randn(classes, dims, generator=g)

    def encode(y):
        return (nn.functional.one_hot(y, classes).float() + 0.3 * torch.randn(len(y), classes, generator=g)) @ mixing \
            + torch.randn(len(y), dims, generator=g)

    assert probe_accuracy(encode(train_y), train_y, encode(test_y), test_y) >= 0.95


@pytest.mark.parametrize("kind", KINDS)
def test_split_is_disjoint_and_every_label_is_on_both_sides(kind):
    items = labelled_prompts(kind)
    first, second = split_prompts(items, 256, random.Random(0))
    assert not {p for p, _ in first} & {p for p, _ in second}
    assert {label for _, label in first} == {label for _, label in second} == {label for _, label in items}
    assert split_prompts(items, 256, random.Random(0)) == (first, second)  # seeded, hence reproducible
    assert len(first) + len(second) == len(items)  # a space under --num is used whole
    small = split_prompts(items, 24, random.Random(0))  # 24 divides evenly among every kind's labels
    assert len(small[0]) + len(small[1]) == 24


def check_shape(report):
    assert set(report) == {"probe", "pair_difference", "generator", "prompts"}
    assert set(report["probe"]) == set(report["pair_difference"]) == set(KINDS)
    assert set(report["generator"]) == {"prompt_swap", "zero_condition"}
    assert isinstance(report["prompts"], int) and report["prompts"] > 0


def test_a_condition_that_ignores_the_prompt_carries_nothing():
    model = FakeModel(ConstantBackbone())
    model.train()
    report = condition_report(model, num=NUM, seed=0)
    check_shape(report)
    chance = chance_levels()
    for kind in KINDS:
        assert report["probe"][kind] <= chance[kind] + MARGIN, (kind, report)
        assert report["pair_difference"][kind] == 0
    assert report["generator"]["prompt_swap"] == 0
    assert report["generator"]["zero_condition"] > 0  # the DiT does read the condition; it just gets no prompt in it
    assert model.training  # the caller's mode is restored (training code calls this mid-run)


def test_a_condition_made_of_the_prompt_words_carries_every_word():
    report = condition_report(FakeModel(WordBackbone()), num=NUM, seed=1)
    check_shape(report)
    for kind in KINDS:
        assert report["probe"][kind] >= 0.95, (kind, report)
        assert report["pair_difference"][kind] > 0
    assert report["generator"]["prompt_swap"] > 0


def test_cli_on_the_shipped_model():
    result = CliRunner().invoke(app, ["eval", "condition", "--num", str(NUM), "--json"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    report = json.loads(lines[0])
    check_shape(report)
    for kind in KINDS:
        assert 0 <= report["probe"][kind] <= 1
        assert report["pair_difference"][kind] >= 0
    assert all(value >= 0 for value in report["generator"].values())
    # Every probe prompt and every pair prompt goes through the backbone once: at least a probe's worth.
    assert report["prompts"] >= NUM


class WordPrefixBackbone(ConstantBackbone):
    """Prompt-blind query states after one embedding row per word, left-padded to the batch's longest prompt: the
    shape `backbone.condition_embeddings` gives (B, L, D) with a mask."""

    def condition(self, prompts):
        rows = [torch.stack([WordBackbone().embedding(w)[0] for w in p.split()]) for p in prompts]
        length = max(len(r) for r in rows)
        cond = torch.stack([torch.cat([torch.zeros(length - len(r), WIDTH), r, self.value]) for r in rows])
        mask = torch.stack([torch.cat([torch.zeros(length - len(r)), torch.ones(len(r) + QUERIES)]) for r in rows])
        return cond, mask.long()


def test_variable_length_condition_probes_read_the_queries_and_the_generator_reads_the_words():
    report = condition_report(FakeModel(WordPrefixBackbone()), num=NUM, seed=0)
    check_shape(report)
    chance = chance_levels()
    for kind in KINDS:  # the query part ignores the prompt
        assert report["probe"][kind] <= chance[kind] + MARGIN, (kind, report)
        assert report["pair_difference"][kind] == 0
    assert report["generator"]["prompt_swap"] > 0.01, report  # the words before the queries reach the DiT
