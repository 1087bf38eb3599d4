import json
from pathlib import Path

import pytest

from openblip3o.data.shapes import evaluation_set
from openblip3o.evaluation.geneval.groundtruth import render_layout


@pytest.fixture(scope="session")
def heldout_records():
    return evaluation_set("heldout")


@pytest.fixture(scope="session")
def truth_dir(tmp_path_factory, heldout_records) -> Path:
    """Ground-truth renders of the 553 held-out prompts, 4 images each, in GenEval's layout."""
    root = tmp_path_factory.mktemp("truth")
    render_layout(heldout_records, root, n_samples=4, seed=0, progress=False)
    return root


def write_layout(root: Path, records_and_images) -> Path:
    """Build a GenEval layout from (record, [PIL images]) pairs."""
    for index, (rec, images) in enumerate(records_and_images):
        samples = root / f"{index:05d}" / "samples"
        samples.mkdir(parents=True)
        (root / f"{index:05d}" / "metadata.jsonl").write_text(json.dumps(rec) + "\n")
        for j, image in enumerate(images):
            image.save(samples / f"{j:05d}.png")
    return root
