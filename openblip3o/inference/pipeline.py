"""`BLIP3oPipeline`: text-to-image and image question answering over one loaded model, diffusers-style.

    pipe = BLIP3oPipeline.from_pretrained("mini")            # or a folder written by save_pretrained
    images = pipe(prompt=["a photo of a red circle"], generator=torch.Generator().manual_seed(0)).images
    answers = pipe.answer(images=images, questions=["what color is the circle?"])
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import ModelConfig, from_dict
from ..models.backbone import Backbone
from ..models.decoder import DiffusionDecoder
from ..models.encoders import load_target_encoder
from ..models.generator import Generator
from ..models.loading import CheckpointError, require_files
from ..models.unified import BLIP3oModel, Generators
from ..presets import PRESETS, get_preset
from ..utils.images import to_pil
from ..version import __version__

INDEX_FILE = "model_index.json"
COMPONENTS = ("backbone", "generator", "target_encoder", "decoder")
SHIPPED_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
OUTPUT_TYPES = ("pil", "np", "pt")


@dataclass
class BLIP3oPipelineOutput:
    images: list[Image.Image] | np.ndarray | torch.Tensor


def _as_list(value, name: str) -> list[str]:
    items = [value] if isinstance(value, str) else list(value or [])
    if not items:
        raise ValueError(f"{name} is empty: give at least one string")
    if not all(isinstance(p, str) for p in items):
        raise ValueError(f"{name} must be strings")
    return items


class BLIP3oPipeline:
    def __init__(self, model: BLIP3oModel):
        self.model = model.eval()

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    # --- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, config: ModelConfig | None = None) -> BLIP3oPipeline:
        """A pipeline with freshly initialised weights at a preset's sizes (for training or benchmarks)."""
        return cls(BLIP3oModel.from_config(config or get_preset(name)))

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, torch_dtype: torch.dtype = torch.float32) -> BLIP3oPipeline:
        """Load a folder written by `save_pretrained`, or a preset name whose trained weights ship in the package.

        Weights are cast to `torch_dtype` whatever they were stored in (the shipped mini model is stored in fp16).
        """
        path = Path(name_or_path)
        if not path.is_dir() and str(name_or_path) in PRESETS:
            shipped = SHIPPED_WEIGHTS / str(name_or_path)
            if (shipped / INDEX_FILE).is_file():
                path = shipped
            elif str(name_or_path) == "mini":
                warnings.warn("no trained 'mini' weights are shipped in this install; using random weights", stacklevel=2)
                return cls.from_preset("mini")
            else:
                raise CheckpointError(
                    f"preset {name_or_path!r} ships no weights: pass a folder written by save_pretrained "
                    "(or converted from the official checkpoint)"
                )
        if not path.is_dir():
            raise CheckpointError(f"{name_or_path}: no such folder and no such preset (presets: {', '.join(PRESETS)})")
        require_files(path, [INDEX_FILE], "pipeline")
        index = json.loads((path / INDEX_FILE).read_text(encoding="utf-8"))
        config = from_dict(ModelConfig, index["config"])
        needed = [c for c in COMPONENTS if c != "decoder" or config.target.kind == "clip"]
        missing = [c for c in needed if not (path / c).is_dir()]
        if missing:
            raise CheckpointError(f"pipeline: {path} lacks the component folder(s) {', '.join(missing)}")
        backbone = Backbone.from_pretrained(path / "backbone", config.backbone)
        target_encoder = load_target_encoder(path / "target_encoder", config.target)
        generator = Generator.from_pretrained(path / "generator")
        decoder = DiffusionDecoder.from_pretrained(path / "decoder", config.decoder) if config.target.kind == "clip" else None
        return cls(BLIP3oModel(config, backbone, generator, target_encoder, decoder).to(torch_dtype))

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> None:
        """A folder per component (safetensors + config) and `model_index.json`; `dtype` stores a cast copy
        (e.g. torch.float16 halves the size) and leaves this pipeline untouched. The backbone stays in its own
        precision when the condition is standardised: the prompt-dependent part of its query states is ~1 % of their
        value, and fp16 rounding of the weights and statistics would be a large share of that."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        model = self.model
        if dtype is not None:
            model = copy.deepcopy(self.model)
            keep = model.backbone if self.config.backbone.condition_norm != "none" else None
            for module in (model.backbone, model.generator, model.target_encoder, model.decoder):
                if module is not None and module is not keep:
                    module.to(dtype)
        model.backbone.save_pretrained(directory / "backbone")
        model.generator.save_pretrained(directory / "generator")
        model.target_encoder.save_pretrained(directory / "target_encoder")
        if model.decoder is not None:
            model.decoder.save_pretrained(directory / "decoder")
        index = {"_class_name": type(self).__name__, "openblip3o_version": __version__, "config": self.config.to_dict()}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")

    def to(self, device) -> BLIP3oPipeline:
        self.model.to(device)
        return self

    # --- generation ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: str | list[str], negative_prompt: str | list[str] | None = None,
                 num_images_per_prompt: int = 1, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, decoder_num_inference_steps: int | None = None,
                 decoder_guidance_scale: float | None = None, generator: Generators = None,
                 output_type: str = "pil", progress: bool = True,
                 decoder_level: float | None = None) -> BLIP3oPipelineOutput:
        """Generate `num_images_per_prompt` images for every prompt, in one batch.

        A list of generators (one per image) gives each image its own seed: an image is then the same whether
        generated alone or in a batch. decoder_level: the token-noise level a level-conditioned decoder is told
        (default the model's `decoder.generated_level`).
        """
        prompts = _as_list(prompt, "prompt")
        if num_images_per_prompt < 1:
            raise ValueError("num_images_per_prompt must be at least 1")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        negatives = None
        if negative_prompt is not None:
            negatives = _as_list(negative_prompt, "negative_prompt")
            if len(negatives) == 1:
                negatives = negatives * len(prompts)
            elif len(negatives) * num_images_per_prompt == len(prompts):
                negatives = [n for n in negatives for _ in range(num_images_per_prompt)]
            else:
                raise ValueError(f"{len(negatives)} negative prompts for {len(prompts) // num_images_per_prompt} prompts")
        if isinstance(generator, list) and len(generator) != len(prompts):
            raise ValueError(f"{len(generator)} generators for {len(prompts)} images: give one per image")
        tokens = self.model.sample_tokens(prompts, negatives, generator, num_inference_steps, guidance_scale, progress)
        images = self.model.decode(tokens, None, generator, decoder_num_inference_steps, decoder_guidance_scale, progress,
                                   level=decoder_level)
        return BLIP3oPipelineOutput(images=self._convert(images.clamp(0, 1), output_type))

    @staticmethod
    def _convert(images: torch.Tensor, output_type: str):
        if output_type == "pt":
            return images.cpu()
        if output_type == "np":
            return images.permute(0, 2, 3, 1).float().cpu().numpy()
        return to_pil(images)

    # --- understanding ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def answer(self, images: list[Image.Image], questions: list[str], max_new_tokens: int = 8) -> list[str]:
        """One answer per (image, question), in one batched generate call."""
        questions = _as_list(questions, "questions")
        images = [images] if isinstance(images, Image.Image) else list(images)
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images for {len(questions)} questions")
        return self.model.answer(images, questions, max_new_tokens=max_new_tokens)
