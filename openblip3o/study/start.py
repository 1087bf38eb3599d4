"""The study's `--init`: every variant starts from one trained pipeline's backbone and autoencoders.

BLIP3-o's comparison is made on one pretrained backbone and pretrained image encoders; only the generation side
(queries, projector, DiT and the objective) differs. Retraining the understanding stage and the autoencoders for
every variant spends most of a budget on what the variants share. With an init pipeline:

  - the backbone's language/vision weights come from it (queries and projector start fresh, as does the DiT);
  - clip variants take its target encoder and diffusion decoder;
  - vae variants take a target VAE trained once (the preset's full autoencoder loop) in `out/shared/vae`;
  - the stages these replace are marked done, so `run_training` goes straight to generation (or joint).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ..config import ModelConfig
from ..inference.pipeline import BLIP3oPipeline
from ..training.config import TrainConfig
from ..training.run import DONE, PIPELINE, run_training, save_pipeline

REPLACED_STAGES = ("autoencoder", "understanding")


class StartFrom:
    """`start(out)` writes `out/pipeline` for one variant from the init pipeline (idempotent)."""

    def __init__(self, init: str | Path, preset: str, model_config: ModelConfig, shared_dir: Path, seed: int,
                 log=print, train_config=None):
        self.init, self.preset, self.model_config = init, preset, model_config
        self.shared_dir, self.seed, self.log, self.train_config = Path(shared_dir), seed, log, train_config

    def __call__(self, out: Path) -> None:
        out = Path(out)
        if (out / PIPELINE / "model_index.json").is_file():
            return
        init = BLIP3oPipeline.from_pretrained(self.init)
        torch.manual_seed(self.seed)  # the fresh queries, projector and DiT: the same draw a from-scratch run makes
        pipe = BLIP3oPipeline.from_preset(self.preset, self.model_config)
        model = pipe.model
        model.backbone.model.load_state_dict(init.model.backbone.model.state_dict())
        if self.model_config.target.kind == "clip":
            if init.model.config.target.kind != "clip":
                raise ValueError(f"--init {self.init}: a clip variant needs an init pipeline with a clip target")
            model.target_encoder, model.decoder = init.model.target_encoder, init.model.decoder
        else:
            model.target_encoder = self.shared_vae()
        model.eval()
        save_pipeline(pipe, out)
        for stage in REPLACED_STAGES:
            (out / stage).mkdir(parents=True, exist_ok=True)
            (out / stage / DONE).write_text(json.dumps(
                {"stage": stage, "minutes": 0.0, "result": {"from": str(self.init)}}, indent=2) + "\n")

    def prepare(self) -> None:
        """Train what the variants share (the vae variants' target VAE) now, outside any timed run."""
        if self.model_config.target.kind != "clip":
            self.shared_vae()

    def shared_vae(self) -> torch.nn.Module:
        """The vae variants' target VAE, trained once in `shared_dir/vae` (resumable) and read back after."""
        work = self.shared_dir / "vae"
        if not (work / "autoencoder" / DONE).is_file():
            self.log(f"study: training the shared target VAE in {work}")
            settings = dataclasses.replace(self.train_config or TrainConfig(), seed=self.seed, joint=False)
            run_training(settings, work, ["autoencoder"], progress=False, log=self.log, model_config=self.model_config)
        return BLIP3oPipeline.from_pretrained(work / PIPELINE).model.target_encoder
