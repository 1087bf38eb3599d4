"""The autoencoder's GenEval ceiling (`openblip3o eval reconstruct --metadata`): a perfect autoencoder scores 1,
a blank one 0, and the result does not depend on the batching (the shipped model's: tests/test_shipped_model.py)."""

from types import SimpleNamespace

import torch

from openblip3o.data.shapes.prompts import evaluation_set
from openblip3o.evaluation.geneval.ceiling import autoencoder_ceiling

IMAGE_SIZE = 64


class PassThrough(torch.nn.Module):
    """A stand-in model whose 'tokens' are the images themselves: decoded unchanged, or drawn blank."""

    def __init__(self, blank: bool = False):
        super().__init__()
        self.blank = blank
        self.config = SimpleNamespace(target=SimpleNamespace(image_size=IMAGE_SIZE))
        self.target_encoder = torch.nn.Linear(1, 1)  # a parameter for the device
        self.target_encoder.encode = lambda images: images
        self.target_encoder.normalize = self.target_encoder.denormalize = lambda tokens: tokens
        self.seen_generators = []

    def decode(self, tokens, generator=None, num_inference_steps=None, guidance_scale=None, level=None):
        # The ceiling decodes an image's exact tokens: a level-conditioned decoder must be told level 0.
        assert level == 0.0, level
        self.seen_generators += [g.initial_seed() for g in generator]
        return torch.zeros_like(tokens) if self.blank else tokens


def _records(per_tag: int = 3) -> list[dict]:
    records, seen = [], {}
    for rec in evaluation_set("heldout"):
        if seen.get(rec["tag"], 0) < per_tag:
            seen[rec["tag"]] = seen.get(rec["tag"], 0) + 1
            records.append(rec)
    return records


def test_a_perfect_autoencoder_reaches_every_tag_and_a_blank_one_none():
    records = _records()
    perfect = autoencoder_ceiling(PassThrough(), records, n_samples=2, batch_size=5)
    assert perfect["overall"] == 1.0 and set(perfect["tags"].values()) == {1.0}
    assert perfect["images"] == 2 * len(records) and perfect["ground_truth"] == 1.0
    blank = autoencoder_ceiling(PassThrough(blank=True), records, n_samples=1)
    assert blank["overall"] == 0.0 and blank["ground_truth"] == 1.0


def test_the_result_does_not_depend_on_the_batching():
    records = _records(2)
    model = PassThrough()
    first = autoencoder_ceiling(model, records, n_samples=2, batch_size=3)
    seeds = list(model.seen_generators)
    model.seen_generators.clear()
    assert autoencoder_ceiling(model, records, n_samples=2, batch_size=64) == first
    assert model.seen_generators == seeds == list(range(2 * len(records)))  # record i, sample j -> seed i*n+j


def test_cli_prints_the_summary_per_tag_and_rejects_a_missing_file(tmp_path):
    import json

    from typer.testing import CliRunner

    from openblip3o.cli import app

    metadata = tmp_path / "prompts.jsonl"
    metadata.write_text("".join(json.dumps(rec) + "\n" for rec in _records(1)[:3]))
    result = CliRunner().invoke(app, ["eval", "reconstruct", "--metadata", str(metadata), "--steps", "2",
                                      "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary) == {"overall", "tags", "images", "ground_truth", "round_trip"}
    assert summary["images"] == 3 and summary["round_trip"] and summary["ground_truth"] == 1.0
    missing = CliRunner().invoke(app, ["eval", "reconstruct", "--metadata", str(tmp_path / "none.jsonl")])
    assert missing.exit_code != 0 and "none.jsonl" in missing.output
