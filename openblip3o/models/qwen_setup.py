"""Building Qwen2.5-VL for the backbone: its config from ours, its processor, its image processor, new token rows."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLProcessor
from transformers.utils import is_torchvision_available

from ..config import BackboneConfig, ConfigError
from .tokenizer import IM_END, IMAGE_PAD, PAD_TOKEN, VIDEO_PAD, VISION_END, VISION_START, token_id

MROPE_AXES = 3  # Qwen's multimodal rope splits the rotary half-dimension over (time, height, width)
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")  # Qwen's own, or ours


def image_processor_class():
    """Qwen2-VL's image processor: the torchvision backend if installed, else the PIL one (no fallback warning)."""
    import transformers

    return transformers.Qwen2VLImageProcessor if is_torchvision_available() else transformers.Qwen2VLImageProcessorPil


class BackboneProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL's processor without a video processor (Qwen2_5_VLProcessor insists on finding one otherwise)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    @classmethod
    def get_attributes(cls):
        return ["image_processor", "tokenizer"]


def build_image_processor(vision_config, image_size: int):
    """An image processor matching `vision_config` that turns any image into exactly image_size x image_size pixels."""
    pixels = image_size * image_size  # min == max: every image becomes the same number of patches
    return image_processor_class()(
        patch_size=vision_config.patch_size,
        merge_size=vision_config.spatial_merge_size,
        temporal_patch_size=vision_config.temporal_patch_size,
        size={"shortest_edge": pixels, "longest_edge": pixels},
    )


def _checked_override(section: dict, key: str, value, where: str) -> None:
    """Set section[key] = value, refusing a different value the user wrote (it would silently be ignored)."""
    if key in section and section[key] != value:
        raise ConfigError(f"backbone.{where}.{key}: {section[key]!r} conflicts with {value!r}, derived from the model")
    section[key] = value


def qwen_config(cfg: BackboneConfig, tokenizer_or_vocab_size) -> Qwen2_5_VLConfig:
    """A `Qwen2_5_VLConfig` from `cfg.text` / `cfg.vision`, with the vocabulary and special ids of the tokenizer.

    Given a tokenizer, vocab size and every special token id are looked up by name; given an int (for parameter
    counts on the meta device), only the vocab size is set. The vision tower's output width is the text width.
    """
    text, vision = dict(cfg.text), dict(cfg.vision)
    top: dict = {}
    if isinstance(tokenizer_or_vocab_size, int):
        _checked_override(text, "vocab_size", tokenizer_or_vocab_size, "text")
    else:
        tok = tokenizer_or_vocab_size
        _checked_override(text, "vocab_size", len(tok), "text")
        for key, name in (("pad_token_id", PAD_TOKEN), ("bos_token_id", PAD_TOKEN), ("eos_token_id", IM_END)):
            _checked_override(text, key, token_id(tok, name), "text")  # Qwen: bos = pad = <|endoftext|>
        names = {"image_token_id": IMAGE_PAD, "video_token_id": VIDEO_PAD}
        names |= {"vision_start_token_id": VISION_START, "vision_end_token_id": VISION_END}
        top = {key: token_id(tok, name) for key, name in names.items()}
    try:
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **top)
    except (TypeError, ValueError) as error:  # huggingface_hub's strict dataclasses reject wrong types
        raise ConfigError(f"backbone.text / backbone.vision: {error}") from error
    # The merger projects vision tokens into the text stream: its width is the text width (Qwen's default is not).
    _checked_override(vision, "out_hidden_size", config.text_config.hidden_size, "vision")
    config.vision_config.out_hidden_size = config.text_config.hidden_size
    _check_mrope(config)
    return config


def _check_mrope(config: Qwen2_5_VLConfig) -> None:
    """mrope_section must cover the rotary half-dimension exactly, or Qwen fails deep inside its rotary embedding."""
    text = config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    section = text.rope_parameters.get("mrope_section")
    if section is None or len(section) != MROPE_AXES or sum(section) != head_dim // 2:
        raise ConfigError(
            f"backbone.text.rope_parameters.mrope_section: {section!r} must be {MROPE_AXES} numbers summing to "
            f"head_dim / 2 = {head_dim // 2}"
        )
    if config.vision_config.out_hidden_size != text.hidden_size:
        raise ConfigError("backbone.vision.out_hidden_size must equal the text hidden size")


def init_new_rows(model: nn.Module, old_count: int, new_count: int) -> None:
    """Set embedding (and untied lm_head) rows [old_count, new_count) to the mean of rows [0, old_count)."""
    if new_count > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(new_count, mean_resizing=False)  # rows set just below
    matrices = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not matrices[0]:
        matrices.append(head.weight)
    with torch.no_grad():
        for weight in matrices:
            weight[old_count:new_count] = weight[:old_count].mean(dim=0, keepdim=True)


def load_image_processor(path: Path, vision_config, image_size: int):
    """The folder's saved image processor if it has one, else one built from the vision config."""
    if any((path / name).is_file() for name in IMAGE_PROCESSOR_FILES):
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(path, local_files_only=True)
    return build_image_processor(vision_config, image_size)
