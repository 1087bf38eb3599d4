"""The vision-language backbone: a real `transformers` Qwen2.5-VL, BLIP3-o's learnable queries, and a projector.

Two paths share one model:
  generation     prompts -> `generation_inputs` (queries last) -> base model (no lm_head) -> final-norm states at the
                 N query positions -> projector -> condition (B, N, D) for the DiT (with `condition_embeddings`, the
                 template's words go first: their input embeddings or, with `condition_word_layer`, the language
                 model's states at their positions: (B, L, D), L = template length).
  understanding  images + questions -> `understanding_inputs` -> `generate` (greedy) -> answers; or a CE loss.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

from ..config import BackboneConfig, ConfigError
from .condition_norm import ConditionStandardizer
from .errors import CheckpointError
from .qwen_setup import BackboneProcessor, build_image_processor, init_new_rows, load_image_processor, qwen_config
from .template import generation_inputs, language_inputs, understanding_inputs
from .tokenizer import (
    GEN_QUERY,
    IM_END,
    PAD_TOKEN,
    add_generation_tokens,
    build_shapes_tokenizer,
    token_id,
)
from .vision_position import VisionPosition

QUERIES_FILE = "queries.safetensors"  # the learnable queries and the projector, beside the HF model files
QUERIES_KEY = "queries"
PROJECTOR_PREFIX = "projector."
CONDITION_NORM_PREFIX = "condition_norm."
WORD_PROJECTOR_PREFIX = "word_projector."
STATE_PROJECTOR_PREFIX = "state_projector."
RMS_EPS = 1e-6  # unit-RMS scaling of the token embeddings in the condition
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json")  # single file or sharded
# What `save_pretrained` writes and `from_pretrained` requires (one of WEIGHTS_FILES as well).
REQUIRED_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "processor_config.json", QUERIES_FILE)
LOADING_INFO_KEYS = ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")  # from output_loading_info
VISION_POSITIONS = ("none", "sincos")  # backbone.vision_position
RESAMPLE = Image.Resampling.BICUBIC  # resizing understanding inputs to image_size


class BackboneLoadError(CheckpointError, RuntimeError):
    """A saved backbone that cannot be loaded as is: a missing file, or missing / unexpected / mismatched weights.

    A `CheckpointError` like every other load failure, so the CLI reports it in one line; still a RuntimeError for
    callers that caught it as one."""


class Backbone(nn.Module):
    """Qwen2.5-VL + N learnable queries + a projector.

    Attributes:
        model: `Qwen2_5_VLForConditionalGeneration`.
        tokenizer: has GEN_START / GEN_QUERY; the chat template is THE prompt template (see template.py).
        processor: `BackboneProcessor` (image processor + tokenizer).
        queries: (1, N, hidden) parameter, standard-normal init (BLIP3-o).
        projector: Linear(hidden, hidden) or Identity, maps query states to the condition.
        word_projector: Linear(hidden, D) for the template's words, or None (see `condition_embeddings`).
        state_projector: Linear(hidden, D) for the second word part, or None (see `condition_state_layer`).
    """

    def __init__(self, cfg: BackboneConfig, model: Qwen2_5_VLForConditionalGeneration, tokenizer, image_processor):
        super().__init__()
        if cfg.projector not in ("linear", "identity"):
            raise ConfigError(f"backbone.projector: {cfg.projector!r} is not one of 'linear', 'identity'")
        vocab_size = model.config.text_config.vocab_size
        if not tokenizer.chat_template:
            raise ConfigError("the backbone's tokenizer has no chat template (the prompt template needs Qwen's ChatML)")
        if len(tokenizer) > vocab_size:
            raise ConfigError(f"tokenizer has {len(tokenizer)} tokens but the model's vocabulary only {vocab_size}")
        layers = model.config.text_config.num_hidden_layers
        if not -1 <= cfg.condition_word_layer <= layers:
            raise ConfigError(f"backbone.condition_word_layer: {cfg.condition_word_layer} is not in [-1, {layers}] "
                              f"(0 = input embeddings, k = after language layer k, -1 = final states)")
        state_layer = cfg.condition_state_layer
        if state_layer is not None and (not cfg.condition_embeddings or state_layer == 0
                                        or not -1 <= state_layer <= layers):
            raise ConfigError(f"backbone.condition_state_layer: {state_layer} needs condition_embeddings and a layer "
                              f"in 1..{layers} or -1 (the states after that language layer, or the final states)")
        if not 0.0 <= cfg.condition_word_dropout < 1.0:
            raise ConfigError(f"backbone.condition_word_dropout: {cfg.condition_word_dropout} is not in [0, 1)")
        if cfg.vision_position not in VISION_POSITIONS:
            raise ConfigError(f"backbone.vision_position: {cfg.vision_position!r} is not one of {VISION_POSITIONS}")
        self.cfg = cfg
        self.model = model
        self.vision_position = (VisionPosition(model.model.visual, cfg.vision_position_scale)
                                if cfg.vision_position == "sincos" else None)
        self.tokenizer = tokenizer
        self.processor = BackboneProcessor(image_processor=image_processor, tokenizer=tokenizer)
        hidden = model.config.text_config.hidden_size
        queries = torch.randn(1, cfg.num_queries, hidden)
        if cfg.query_init_scale is not None:
            queries *= cfg.query_init_scale * model.get_input_embeddings().weight.detach().float().std()
        self.queries = nn.Parameter(queries)
        self.projector = nn.Linear(hidden, hidden) if cfg.projector == "linear" else nn.Identity()
        self.word_projector = nn.Linear(hidden, hidden) if cfg.condition_embeddings else None
        self.state_projector = nn.Linear(hidden, hidden) if state_layer is not None else None
        # Per (query, channel) statistics over training captions, fitted once (see condition_norm.py).
        self.condition_norm = (
            ConditionStandardizer(cfg.num_queries, hidden, cfg.condition_norm_momentum) if cfg.condition_norm == "standardize" else nn.Identity()
        )
        # generate() stops at <|im_end|> and pads with <|endoftext|>, looked up by name.
        model.generation_config.eos_token_id = token_id(tokenizer, IM_END)
        model.generation_config.pad_token_id = token_id(tokenizer, PAD_TOKEN)

    # ----------------------------------------------------------------------------------------------- construction
    @classmethod
    def from_config(cls, cfg: BackboneConfig) -> "Backbone":
        """A fresh mini backbone from `cfg.text` / `cfg.vision`, or Qwen2.5-VL weights from `cfg.pretrained_path`.

        With a pretrained path the model, tokenizer (whatever `cfg.tokenizer` says) and image processor (if saved;
        else built from the vision config) come from that local folder; the generation tokens are added and their
        embedding rows set to the mean of the existing rows. Queries and projector start fresh.
        """
        if cfg.pretrained_path is None:
            if cfg.tokenizer != "shapes":
                raise ConfigError("backbone.tokenizer: 'pretrained' needs backbone.pretrained_path")
            tokenizer = build_shapes_tokenizer()
            add_generation_tokens(tokenizer)
            model = Qwen2_5_VLForConditionalGeneration(qwen_config(cfg, tokenizer))
            return cls(cfg, model, tokenizer, build_image_processor(model.config.vision_config, cfg.image_size))
        path = Path(cfg.pretrained_path)
        if not path.is_dir():
            raise FileNotFoundError(f"backbone.pretrained_path: {path} is not a directory")
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        old_count = len(tokenizer)
        if add_generation_tokens(tokenizer):
            init_new_rows(model, old_count, len(tokenizer))
        return cls(cfg, model, tokenizer, load_image_processor(path, model.config.vision_config, cfg.image_size))

    @classmethod
    def from_pretrained(cls, directory: str | Path, cfg: BackboneConfig) -> "Backbone":
        """Load what `save_pretrained` wrote, strictly: any missing file or weight mismatch is a BackboneLoadError."""
        directory = Path(directory)
        missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
        if not any((directory / name).is_file() for name in WEIGHTS_FILES):
            missing.append(" or ".join(WEIGHTS_FILES))
        if missing:
            raise BackboneLoadError(f"{directory}: missing file(s) {', '.join(missing)}")
        try:
            model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                directory, local_files_only=True, output_loading_info=True
            )
        except (RuntimeError, ValueError, OSError) as error:  # e.g. a weight whose shape disagrees with config.json
            raise BackboneLoadError(f"{directory}: model weights do not load: {error}") from error
        problems = {key: sorted(map(str, info.get(key) or [])) for key in LOADING_INFO_KEYS}
        problems = {key: value for key, value in problems.items() if value}
        if problems:
            raise BackboneLoadError(f"{directory}: model weights do not match the config: {json.dumps(problems)}")
        processor = BackboneProcessor.from_pretrained(directory, local_files_only=True)  # tokenizer + image processor
        backbone = cls(cfg, model, processor.tokenizer, processor.image_processor)
        backbone._load_queries(directory / QUERIES_FILE)
        return backbone

    def _load_queries(self, path: Path) -> None:
        """Load queries + projector with an exact key and shape check (safetensors only, never pickle)."""
        expected = self._queries_state()
        found = load_file(path)
        missing = sorted(set(expected) - set(found))
        unexpected = sorted(set(found) - set(expected))
        mismatched = [
            f"{k}: saved {tuple(found[k].shape)}, expected {tuple(v.shape)}"
            for k, v in expected.items()
            if k in found and found[k].shape != v.shape
        ]
        if missing or unexpected or mismatched:
            raise BackboneLoadError(
                f"{path.name}: missing {missing}, unexpected {unexpected}, mismatched {mismatched}"
            )
        with torch.no_grad():
            self.queries.copy_(found[QUERIES_KEY])
            for prefix, module in self._condition_modules():
                module.load_state_dict({k[len(prefix) :]: v for k, v in found.items() if k.startswith(prefix)})

    def _condition_modules(self) -> list[tuple[str, nn.Module]]:
        """(key prefix, module) of what `queries.safetensors` holds beside the queries."""
        modules = [(PROJECTOR_PREFIX, self.projector), (CONDITION_NORM_PREFIX, self.condition_norm),
                   (WORD_PROJECTOR_PREFIX, self.word_projector), (STATE_PROJECTOR_PREFIX, self.state_projector)]
        return [(prefix, module) for prefix, module in modules if module is not None]

    def _word_parts(self) -> list[tuple[int, nn.Linear]]:
        """(layer, projector) of each word part, in condition order: none, the words, or the words then the states."""
        parts = [] if self.word_projector is None else [(self.cfg.condition_word_layer, self.word_projector)]
        if self.state_projector is not None:
            parts.append((self.cfg.condition_state_layer, self.state_projector))
        return parts

    def _queries_state(self) -> dict[str, torch.Tensor]:
        state = {QUERIES_KEY: self.queries}
        for prefix, module in self._condition_modules():
            state |= {prefix + k: v for k, v in module.state_dict().items()}
        return state

    def save_pretrained(self, directory: str | Path) -> None:
        """HF model (safetensors) + tokenizer + processor config + queries/projector in `queries.safetensors`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory)
        self.processor.save_pretrained(directory)  # writes the tokenizer files and processor_config.json
        tensors = {k: v.detach().cpu().contiguous() for k, v in self._queries_state().items()}
        save_file(tensors, directory / QUERIES_FILE)

    def set_backbone_trainable(self, trainable: bool) -> None:
        """Freeze or unfreeze the Qwen model (the queries and projector stay trainable): BLIP3-o freezes it."""
        self.model.requires_grad_(trainable)

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def hidden_size(self) -> int:
        return self.model.config.text_config.hidden_size

    @property
    def condition_dim(self) -> int:
        """Width D of `condition()` outputs (the projector's output width)."""
        return self.projector.out_features if isinstance(self.projector, nn.Linear) else self.hidden_size

    @property
    def num_queries(self) -> int:
        return self.queries.shape[1]

    @property
    def vision_grid(self) -> int:
        """G: the side of the vision tower's merged-token grid (the language model reads G * G tokens per image)."""
        vision = self.model.config.vision_config
        return self.cfg.image_size // (vision.patch_size * vision.spatial_merge_size)

    @property
    def device(self) -> torch.device:
        return self.queries.device

    # ----------------------------------------------------------------------------------------------- generation path
    def condition(self, prompts: list[str], word_keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The DiT's condition for B prompts: (B, N, D) normalised, projected query states and the (B, N) mask."""
        return self.condition_from_ids(*self.generation_ids(prompts), word_keep=word_keep)

    def word_keep(self, batch: int) -> torch.Tensor | None:
        """(B, 1) bool: which rows keep the first word part under `condition_word_dropout` in training; None when
        nothing is dropped (inference, or no dropout)."""
        if not (self.training and self.cfg.condition_word_dropout > 0 and self._word_parts()):
            return None
        return torch.rand(batch, 1, device=self.device) >= self.cfg.condition_word_dropout

    def condition_from_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           word_keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`condition` on token ids already in the generation template (what `generation_ids` returns).

        With `condition_embeddings` the template's words (unit RMS, `word_projector`) precede the query part: (B, L, D)
        and the (B, L) mask, padding masked. The words are the input embeddings (`condition_word_layer` 0) or the
        language model's states at their positions, from the same forward pass as the query states. With
        `condition_state_layer` a second word part (`state_projector`) follows the first: (B, 2 L - N, D). In training
        `condition_word_dropout` of the rows have their first word part zeroed and masked: drawn here, or `word_keep`
        (B, 1) bool from `word_keep()` when rows must share one draw (a caption and its binding negative).
        """
        parts = self._word_parts()
        states, mask, words = self._generation_forward(input_ids, attention_mask, [layer for layer, _ in parts])
        condition = self.projector(self.condition_norm(states))  # (B, N, D)
        if not parts:
            return condition, mask
        word_mask = attention_mask[:, :-self.num_queries]  # (B, L - N)
        rows = [projector(F.rms_norm(part.to(condition.dtype), part.shape[-1:], eps=RMS_EPS))  # unit RMS in
                for (_, projector), part in zip(parts, words)]
        masks = [word_mask] * len(rows)
        keep = word_keep if word_keep is not None else self.word_keep(word_mask.shape[0])
        if keep is not None:
            rows[0] = rows[0] * keep.unsqueeze(-1).to(rows[0].dtype)
            masks[0] = word_mask * keep.to(word_mask.dtype)
        return torch.cat([*rows, condition], dim=1), torch.cat([*masks, mask], dim=1)

    def generation_ids(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """B prompts in THE generation template, left padded, queries last: (B, L) ids and mask on this device."""
        batch = generation_inputs(self.tokenizer, prompts, self.num_queries, self.cfg.max_prompt_tokens)
        return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)

    def query_states(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw final states at the query positions for B prompts: (B, N, hidden) and the (B, N) long mask (all ones)."""
        return self.query_states_from_ids(*self.generation_ids(prompts))

    def query_states_from_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                              model: Qwen2_5_VLForConditionalGeneration | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor]:
        """`query_states` on template ids (B, L) whose last N are the GEN_QUERY placeholders; `model`: another copy
        of the Qwen model to read them with (a frozen reference, e.g.), default this backbone's."""
        states, mask, _ = self._generation_forward(input_ids, attention_mask, [], model)
        return states, mask

    def _generation_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, word_layers: list[int],
                            model: Qwen2_5_VLForConditionalGeneration | None = None):
        """One forward pass of the generation template -> query states (B, N, hidden), their (B, N) mask, and for
        each of `word_layers` the states of the words before the queries ((B, L - N, hidden); 0 = input embeddings,
        k = after language layer k, -1 = final states).

        Runs the base model only (`self.model.model`: no lm_head, no vocabulary logits). Position ids count only real
        tokens, so a left-padded row gets the positions it would have alone (transformers would otherwise number the
        padding too, since text-only inputs carry no `mm_token_type_ids` to derive Qwen's 3-D positions from).
        """
        n = self.num_queries
        if not bool((input_ids[:, -n:] == token_id(self.tokenizer, GEN_QUERY)).all()):
            raise RuntimeError("generation_inputs must put the GEN_QUERY placeholders last")
        model = self.model if model is None else model
        embeds = model.get_input_embeddings()(input_ids)  # (B, L, hidden)
        queries = self.queries.to(embeds.dtype).expand(input_ids.shape[0], -1, -1)  # (B, N, hidden)
        embeds = torch.cat([embeds[:, :-n], queries], dim=1)  # the placeholders' rows become the queries
        position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)  # (B, L); padding is masked anyway
        out = model.model(
            input_ids=None,
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            output_hidden_states=any(layer not in (0, -1) for layer in word_layers),
        )
        states = out.last_hidden_state[:, -n:].to(self.queries.dtype)  # (B, N, hidden), after the final RMSNorm
        # The norm and projector keep the queries' dtype (float32) even when the model runs in bf16.
        layer_states = {0: embeds, -1: out.last_hidden_state}
        words = [(layer_states[layer] if layer in layer_states else out.hidden_states[layer])[:, :-n]
                 for layer in word_layers]
        return states, attention_mask[:, -n:], words

    @torch.no_grad()
    def fit_condition_norm(self, prompt_batches) -> None:
        """Fit the condition norm's statistics on the raw query states of `prompt_batches` (lists of captions)."""
        if not isinstance(self.condition_norm, ConditionStandardizer):
            return
        self.condition_norm.fit(torch.cat([self.query_states(list(prompts))[0] for prompts in prompt_batches]))

    # ----------------------------------------------------------------------------------------------- understanding
    def _prepare_images(self, images, questions, answers=None) -> list[Image.Image]:
        """Validate a VQA batch and return RGB images at image_size x image_size."""
        if isinstance(images, Image.Image) or not isinstance(images, (list, tuple)):
            raise ValueError(f"images must be a list of PIL images, got {type(images).__name__}")
        if isinstance(questions, str) or not isinstance(questions, (list, tuple)):
            raise ValueError(f"questions must be a list of str, got {type(questions).__name__}")
        if not images:
            raise ValueError("images is empty: give at least one image and question")
        if len(images) != len(questions):
            raise ValueError(f"got {len(images)} images but {len(questions)} questions")
        if answers is not None and len(answers) != len(questions):
            raise ValueError(f"got {len(answers)} answers but {len(questions)} questions")
        for i, image in enumerate(images):
            if not isinstance(image, Image.Image):
                raise ValueError(f"images[{i}] is a {type(image).__name__}, not a PIL image")
        for name, texts in (("questions", questions), ("answers", answers or [])):
            for i, text in enumerate(texts):
                if not isinstance(text, str):
                    raise ValueError(f"{name}[{i}] is a {type(text).__name__}, not a str")
        side = (self.cfg.image_size, self.cfg.image_size)
        return [im if im.size == side and im.mode == "RGB" else _to_rgb(im).resize(side, RESAMPLE) for im in images]

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    @torch.no_grad()
    def answer(self, images: list[Image.Image], questions: list[str], max_new_tokens: int = 8) -> list[str]:
        """Greedy answers, one `generate` call for the whole (left-padded) batch; decoded without special tokens."""
        prepared = self._prepare_images(images, questions)
        batch = self._to_device(understanding_inputs(self.processor, prepared, list(questions)))
        output = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        new_tokens = output[:, batch["input_ids"].shape[1] :]  # (B, <= max_new_tokens)
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def language_loss(self, captions: list[str]) -> torch.Tensor:
        """Mean next-token cross-entropy over every real token of the captions in the generation template (scalar).

        The mini counterpart of an LLM's pretraining: it teaches the states after a prompt to carry what it says,
        which the frozen-backbone generation path relies on. Full vocabulary logits are needed here (it is a loss
        over tokens), unlike on the generation path.
        """
        batch = self._to_device(language_inputs(self.tokenizer, list(captions), self.cfg.max_prompt_tokens))
        position_ids = (batch["attention_mask"].cumsum(dim=-1) - 1).clamp(min=0)  # left padding, as in condition()
        return self.model(**batch, position_ids=position_ids, use_cache=False).loss

    def understanding_loss(self, images: list[Image.Image], questions: list[str], answers: list[str],
                           follow_ups: list[list[tuple[str, str]]] | None = None) -> torch.Tensor:
        """Mean cross-entropy over the answer tokens and their closing <|im_end|> (scalar); `follow_ups`: more
        (question, answer) turns per row about the same image (see `understanding_inputs`)."""
        prepared = self._prepare_images(images, questions, answers)
        batch = self._to_device(understanding_inputs(self.processor, prepared, list(questions), list(answers),
                                                     follow_ups))
        return self.model(**batch, use_cache=False).loss


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB from any mode; transparency is composited on black (ShapesWorld's background), not dropped to garbage."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")
