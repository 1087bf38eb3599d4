"""Import the official BLIP3-o checkpoint (`BLIP3o/BLIP3o-Model-4B` / `-8B`) into the `BLIP3oPipeline` layout.

Official layout (read from the official repository `JiuhaiChen/BLIP3o`, branch main, and the HF model card):
  - `blip3o/model/language_model/blip3o_qwen.py`: `blip3oQwenForCausalLM` subclasses transformers 4.51's
    `Qwen2_5_VLForConditionalGeneration` and sets `self.model = blip3oQwenModel(config)`, itself
    `blip3oMetaModel` + `Qwen2_5_VLModel`. Saved keys therefore are `visual.*` (Qwen ViT), `model.embed_tokens.*`,
    `model.layers.*`, `model.norm.*` (text) and `lm_head.*` (absent when the 3B's embeddings are tied).
  - `blip3o/model/blip3o_arch.py` (`blip3oMetaModel.__init__`): `model.latent_queries` (1, n_query, hidden),
    `model.dit` (from `build_dit`), `model.down_projector` (the identity: no weights), `model.gen_vision_tower`
    (EVA-CLIP, loaded lazily; training only).
  - `blip3o/model/nextdit_crossattn.py`: `NextDiTCrossAttn` (HF PreTrainedModel) holds the DiT as `.model`, a
    vendored `LuminaNextDiT2DModel`, so DiT keys are `model.dit.model.<lumina key>`; `freqs_cis` is a plain
    attribute (not saved).
  - `blip3o/model/lumina_nextdit2d.py`: the vendored DiT uses diffusers' own sub-modules and attribute names
    (`patch_embedder`, `time_caption_embed`, `layers.N.{gate,attn1,attn2,feed_forward,norm1,ffn_norm1,norm2,
    ffn_norm2,norm1_context}`, `norm_out`, `pad_token`), so a key maps to diffusers' `LuminaNextDiT2DModel`
    unchanged once the `model.dit.model.` prefix is removed. It adds `caption_projection`
    (`PixArtAlphaTextProjection`: Linear -> GELU(tanh) -> Linear, LLM width -> DiT width) and builds its blocks and
    caption embedder at the DiT width; diffusers' class has no such module and cross-attends at the LLM width.
    openblip3o's `Generator` wraps diffusers' class, so an official DiT with `caption_projection.*` is refused with
    a `CheckpointError` naming those keys (see `STRUCTURAL_GAPS`) rather than converted into a different network.
  - HF checkpoint `BLIP3o/BLIP3o-Model-8B`: the LLM shards at the top (`model.safetensors` or
    `model-*.safetensors` + `model.safetensors.index.json`), tokenizer files, and `diffusion-decoder/` holding the
    Emu2-Gen decoder as diffusers folders `unet/` and `vae/` (plus a scheduler and a custom pipeline, not needed).

Ours (see `BLIP3oPipeline.save_pretrained`): `backbone/` (transformers 5 keys `model.visual.*`,
`model.language_model.*`, `lm_head.*` + `queries.safetensors`), `generator/` (diffusers LuminaNextDiT2DModel),
`decoder/` (unet/ + vae/ + an identity condition projection), `target_encoder/` (built from the preset: the
official checkpoint ships no EVA-CLIP weights; pass `eva_clip` to load them).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

from ..config import ModelConfig
from ..models.backbone import Backbone
from ..models.qwen_setup import init_new_rows, load_image_processor, qwen_config
from ..models.decoder import DiffusionDecoder
from ..models.encoders import build_target_encoder
from ..models.generator import Generator
from ..models.loading import CheckpointError
from ..models.tokenizer import PAD_TOKEN, add_generation_tokens, token_id
from ..models.unified import BLIP3oModel

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
DECODER_FOLDER = "diffusion-decoder"
DECODER_SUBFOLDERS = ("unet", "vae")
OFFICIAL_QUERIES = "model.latent_queries"
OFFICIAL_DIT = "model.dit.model."
OFFICIAL_VISUAL, OURS_VISUAL = "visual.", "model.visual."
OFFICIAL_TEXT, OURS_TEXT = "model.", "model.language_model."
TEXT_MODULES = ("embed_tokens.", "layers.", "norm.")
LM_HEAD = "lm_head.weight"
EMBEDDINGS = OURS_TEXT + "embed_tokens.weight"
# Official modules deliberately not converted, with the reason printed to the user.
SKIPPED_PREFIXES = {
    "model.gen_vision_tower.": "EVA-CLIP target encoder (training only; pass eva_clip= to load its weights)",
    "model.vae.": "build_dit's VAE (unused on the EVA-CLIP path)",
}
# Official DiT modules with no counterpart in openblip3o's Generator (diffusers LuminaNextDiT2DModel).
STRUCTURAL_GAPS = {
    OFFICIAL_DIT + "caption_projection.": (
        "the official DiT projects the condition (Linear-GELU-Linear, LLM width -> DiT width) before its blocks; "
        "openblip3o's Generator cross-attends at the LLM width with no such module, so these weights have nowhere "
        "to go (Generator needs a caption_projection and blocks built at the DiT width)"
    ),
}
LIST_LIMIT = 12  # keys named per problem in an error message
COMPONENT_BACKBONE, COMPONENT_QUERIES, COMPONENT_GENERATOR = "backbone", "queries", "generator"


# --- key mapping ----------------------------------------------------------------------------------------------
def official_to_ours(key: str) -> tuple[str, str] | None:
    """(component, our key) for an official key, or None when it maps nowhere (skipped or unknown)."""
    if key == OFFICIAL_QUERIES:
        return COMPONENT_QUERIES, "queries"
    if key.startswith(OFFICIAL_DIT):
        return COMPONENT_GENERATOR, key[len(OFFICIAL_DIT):]
    if key.startswith(OFFICIAL_VISUAL):
        return COMPONENT_BACKBONE, OURS_VISUAL + key[len(OFFICIAL_VISUAL):]
    if key.startswith(OFFICIAL_TEXT) and key[len(OFFICIAL_TEXT):].startswith(TEXT_MODULES):
        return COMPONENT_BACKBONE, OURS_TEXT + key[len(OFFICIAL_TEXT):]
    if key.startswith("lm_head."):
        return COMPONENT_BACKBONE, key
    return None


def ours_to_official(component: str, key: str) -> str:
    """The inverse of `official_to_ours` (used to write synthetic official checkpoints and for round trips)."""
    if component == COMPONENT_QUERIES:
        return OFFICIAL_QUERIES
    if component == COMPONENT_GENERATOR:
        return OFFICIAL_DIT + key
    if key.startswith(OURS_VISUAL):
        return OFFICIAL_VISUAL + key[len(OURS_VISUAL):]
    if key.startswith(OURS_TEXT):
        return OFFICIAL_TEXT + key[len(OURS_TEXT):]
    if key.startswith("lm_head."):
        return key
    raise KeyError(f"{component} key {key!r} has no official name")


def to_official_state_dict(model: BLIP3oModel) -> dict[str, torch.Tensor]:
    """Our backbone, queries and DiT weights under the official names (tied lm_head left out, as HF saves it)."""
    state = {}
    qwen = model.backbone.model
    tied = qwen.get_output_embeddings().weight is qwen.get_input_embeddings().weight
    for key, value in qwen.state_dict().items():
        if not (tied and key == LM_HEAD):
            state[ours_to_official(COMPONENT_BACKBONE, key)] = value
    state[OFFICIAL_QUERIES] = model.backbone.queries.detach()
    for key, value in model.generator.dit.state_dict().items():
        state[ours_to_official(COMPONENT_GENERATOR, key)] = value
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def export_official(model: BLIP3oModel, directory: str | Path) -> Path:
    """Write `model` in the official folder layout (weights, tokenizer, image processor, diffusion-decoder/)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(to_official_state_dict(model), str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps({"architectures": ["blip3oQwenForCausalLM"]}) + "\n")
    model.backbone.tokenizer.save_pretrained(directory)
    model.backbone.processor.image_processor.save_pretrained(directory)
    if model.decoder is not None:
        model.decoder.unet.save_pretrained(directory / DECODER_FOLDER / "unet", safe_serialization=True)
        model.decoder.vae.save_pretrained(directory / DECODER_FOLDER / "vae", safe_serialization=True)
    return directory


# --- reading --------------------------------------------------------------------------------------------------
def read_official_state(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of the official LLM checkpoint: one `model.safetensors` or the shards its index names."""
    if (directory / WEIGHTS_INDEX).is_file():
        index = json.loads((directory / WEIGHTS_INDEX).read_text(encoding="utf-8"))
        shards = sorted(set(index["weight_map"].values()))
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise CheckpointError(f"official checkpoint {directory}: shard(s) {', '.join(missing)} missing")
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state |= load_file(str(directory / shard))
        return state
    if (directory / WEIGHTS_FILE).is_file():
        return load_file(str(directory / WEIGHTS_FILE))
    raise CheckpointError(f"official checkpoint {directory}: neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX} found")


def _named(keys, limit: int = LIST_LIMIT) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def partition(state: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, list[str]], list[str]]:
    """Split official tensors by our component. Returns (parts, skipped {reason: keys}, unmapped keys)."""
    parts: dict[str, dict[str, torch.Tensor]] = {COMPONENT_BACKBONE: {}, COMPONENT_QUERIES: {}, COMPONENT_GENERATOR: {}}
    skipped: dict[str, list[str]] = {}
    unmapped = []
    for key, value in state.items():
        prefix = next((p for p in SKIPPED_PREFIXES if key.startswith(p)), None)
        if prefix is not None:
            skipped.setdefault(SKIPPED_PREFIXES[prefix], []).append(key)
            continue
        gap = next((p for p in STRUCTURAL_GAPS if key.startswith(p)), None)
        target = None if gap else official_to_ours(key)
        if target is None:
            unmapped.append(key)
        else:
            parts[target[0]][target[1]] = value
    return parts, skipped, unmapped


def _check(component: str, given: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], problems: list[str]) -> None:
    missing = set(expected) - set(given)
    extra = set(given) - set(expected)
    shapes = [f"{ours_to_official(component, k)} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}" for k in sorted(set(given) & set(expected))
              if tuple(given[k].shape) != tuple(expected[k].shape)]
    if missing:
        names = _named(ours_to_official(component, k) for k in missing)
        problems.append(f"missing {component} keys ({len(missing)}): {names}")
    if extra:
        problems.append(f"unmapped {component} keys ({len(extra)}): {_named(ours_to_official(component, k) for k in extra)}")
    if shapes:
        problems.append(f"{component} shapes (official vs expected) ({len(shapes)}): {_named(shapes)}")


# --- conversion -----------------------------------------------------------------------------------------------
def _embedding_rows(parts: dict) -> int:
    if EMBEDDINGS not in parts[COMPONENT_BACKBONE]:
        raise CheckpointError(f"official checkpoint: missing backbone key {ours_to_official(COMPONENT_BACKBONE, EMBEDDINGS)}")
    return parts[COMPONENT_BACKBONE][EMBEDDINGS].shape[0]


def convert_official(source: str | Path, out: str | Path, config: ModelConfig,
                     eva_clip: str | Path | None = None) -> Path:
    """Convert the official checkpoint folder `source` into a `BLIP3oPipeline` folder `out` at `config`'s sizes.

    Every official tensor is either mapped, deliberately skipped (SKIPPED_PREFIXES) or an error; every weight of
    the backbone, queries and DiT must be present with the expected shape. Nothing is written on error.
    """
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise CheckpointError(f"official checkpoint {source}: no such folder")
    decoder_dir = source / DECODER_FOLDER
    lacking = [f"{DECODER_FOLDER}/{s}/config.json" for s in DECODER_SUBFOLDERS if not (decoder_dir / s / "config.json").is_file()]
    if lacking:
        raise CheckpointError(f"official checkpoint {source}: lacks {', '.join(lacking)} (stage-1 checkpoints ship no decoder)")
    if config.decoder.spatial_conditioning:
        raise CheckpointError("the official decoder takes the tokens by cross-attention only: set decoder.spatial_conditioning false")
    if config.backbone.projector != "identity":
        raise CheckpointError("the official model has no projector after the queries: set backbone.projector 'identity'")
    if config.backbone.condition_embeddings:
        raise CheckpointError("the official model conditions on the query states only: set backbone.condition_embeddings false")
    parts, skipped, unmapped = partition(read_official_state(source))
    gaps = [k for k in unmapped if any(k.startswith(p) for p in STRUCTURAL_GAPS)]
    problems = [f"{STRUCTURAL_GAPS[p]}: {_named(k for k in gaps if k.startswith(p))}" for p in STRUCTURAL_GAPS
                if any(k.startswith(p) for k in gaps)]
    unknown = [k for k in unmapped if k not in gaps]
    if unknown:
        problems.append(f"unmapped official keys ({len(unknown)}): {_named(unknown)}")

    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    official_vocab = len(tokenizer)
    add_generation_tokens(tokenizer)
    rows = _embedding_rows(parts)
    bb_cfg = dataclasses.replace(config.backbone, text={k: v for k, v in config.backbone.text.items() if k != "vocab_size"})
    qwen_cfg = qwen_config(bb_cfg, tokenizer)
    qwen_cfg.text_config.vocab_size = rows  # the checkpoint's rows; new tokens beyond them are added below
    tied = bool(getattr(qwen_cfg, "tie_word_embeddings", False))
    with init_empty_weights():  # parameters on the meta device, buffers (rotary tables) real
        qwen = Qwen2_5_VLForConditionalGeneration(qwen_cfg)
    expected_bb = qwen.state_dict()
    if tied and LM_HEAD not in parts[COMPONENT_BACKBONE] and EMBEDDINGS in parts[COMPONENT_BACKBONE]:
        parts[COMPONENT_BACKBONE][LM_HEAD] = parts[COMPONENT_BACKBONE][EMBEDDINGS]
    _check(COMPONENT_BACKBONE, parts[COMPONENT_BACKBONE], expected_bb, problems)

    target_cfg = dataclasses.replace(config.target, pretrained_path=str(eva_clip) if eva_clip else config.target.pretrained_path)
    encoder = build_target_encoder(target_cfg, text_vocab_size=len(tokenizer), eos_token_id=token_id(tokenizer, PAD_TOKEN))
    hidden = qwen_cfg.text_config.hidden_size
    with init_empty_weights():
        generator = Generator(config.generator, encoder.latent_dim, config.target.grid_size, hidden)
    _check(COMPONENT_GENERATOR, parts[COMPONENT_GENERATOR], generator.dit.state_dict(), problems)
    queries_shape = (1, config.backbone.num_queries, hidden)
    _check(COMPONENT_QUERIES, parts[COMPONENT_QUERIES], {"queries": torch.empty(queries_shape, device="meta")}, problems)
    if problems:
        raise CheckpointError(f"official checkpoint {source} does not match preset {config.name!r}:\n  - " + "\n  - ".join(problems))

    qwen.load_state_dict(parts[COMPONENT_BACKBONE], strict=True, assign=True)
    if tied:
        qwen.tie_weights()
    if len(tokenizer) > rows:  # our generation tokens, beyond the official vocabulary: mean rows, as BLIP3-o did
        init_new_rows(qwen, min(official_vocab, rows), len(tokenizer))
    image_processor = load_image_processor(source, qwen.config.vision_config, config.backbone.image_size)
    backbone = Backbone(config.backbone, qwen, tokenizer, image_processor)
    with torch.no_grad():
        backbone.queries.data = parts[COMPONENT_QUERIES]["queries"].clone()
    generator.dit.load_state_dict(parts[COMPONENT_GENERATOR], strict=True, assign=True)
    decoder = DiffusionDecoder.from_config(dataclasses.replace(config.decoder, pretrained_path=str(decoder_dir)),
                                           encoder.token_dim, config.target.grid_size)
    saved_config = dataclasses.replace(
        config,
        backbone=dataclasses.replace(config.backbone, pretrained_path=None),
        target=dataclasses.replace(config.target, pretrained_path=None),
        decoder=dataclasses.replace(config.decoder, pretrained_path=None),
    )
    from ..inference.pipeline import BLIP3oPipeline  # late: the pipeline module imports the CLI-free model stack

    BLIP3oPipeline(BLIP3oModel(saved_config, backbone, generator, encoder, decoder)).save_pretrained(out)
    (out / "conversion.json").write_text(json.dumps({
        "source": str(source), "preset": config.name,
        "skipped": {reason: len(keys) for reason, keys in skipped.items()},
        "added_token_rows": max(0, len(tokenizer) - rows),
    }, indent=2) + "\n", encoding="utf-8")
    return out

