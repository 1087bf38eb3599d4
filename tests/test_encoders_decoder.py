"""Target encoders (CLIP / EVA-CLIP / VAE) and the diffusion decoder, at tiny sizes with the real classes."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from openblip3o.config import DecoderConfig, ObjectiveConfig, TargetConfig
from openblip3o.inference.pipeline import BLIP3oPipeline
from openblip3o.data.shapes import ShapesWorld, vocabulary
from openblip3o.models.decoder import Autoencoder, DiffusionDecoder, build_decoder
from openblip3o.models.encoders import (
    CLIPTargetEncoder,
    VAETargetEncoder,
    build_target_encoder,
    load_target_encoder,
    to_tensor,
)
from openblip3o.models.loading import CheckpointError
from openblip3o.presets import MINI_DECODER as DECODER_DEFAULTS
from openblip3o.presets import MINI_TARGET_MODEL as ENCODER_DEFAULTS
from tiny import tiny_config

PAD, EOS, UNK, FIRST_WORD = 0, 1, 3, 4  # EOS deliberately not 2 (CLIP's legacy argmax pooling)
WORDS = {w: i + FIRST_WORD for i, w in enumerate(vocabulary())}
VOCAB = FIRST_WORD + len(WORDS)
TINY_CLIP = {
    "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
               "patch_size": 8},
    "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "max_position_embeddings": 64},
    "projection_dim": 32,
}
TINY_VAE_TARGET = {"block_out_channels": [8, 16, 16, 16], "down_block_types": ["DownEncoderBlock2D"] * 4,
                   "up_block_types": ["UpDecoderBlock2D"] * 4, "layers_per_block": 1, "latent_channels": 4,
                   "norm_num_groups": 8}
TOKEN_DIM, GRID = 16, 8


def tiny_decoder_config(**changes) -> DecoderConfig:
    unet = {"block_out_channels": [32, 64], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "layers_per_block": 1, "attention_head_dim": 2,
            "cross_attention_dim": 32, "norm_num_groups": 8}
    vae = {"block_out_channels": [8, 16, 16], "down_block_types": ["DownEncoderBlock2D"] * 3,
           "up_block_types": ["UpDecoderBlock2D"] * 3, "layers_per_block": 1, "latent_channels": 4,
           "norm_num_groups": 8}
    return DecoderConfig(**{"unet": unet, "vae": vae, "image_size": 32, "spatial_channels": 8, **changes})


def tokenize(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [[WORDS.get(w, UNK) for w in re.findall(r"[a-z]+", c.lower())] + [EOS] for c in captions]
    length = max(map(len, rows))
    ids = torch.tensor([r + [PAD] * (length - len(r)) for r in rows])
    return ids, (ids != PAD).long()


@pytest.fixture(scope="module")
def shapes_batch():
    world = ShapesWorld("train", seed=0)
    examples = [world[i] for i in range(8)]
    return to_tensor([e.image for e in examples], 64), [e.annotation["captions"]["long"] for e in examples]


@pytest.fixture(scope="module")
def clip_encoder():
    torch.manual_seed(0)
    return build_target_encoder(TargetConfig(model=TINY_CLIP), text_vocab_size=VOCAB, eos_token_id=EOS)


# --- encoders -----------------------------------------------------------------------------------------------

def test_to_tensor_range_and_shape(shapes_batch):
    images, _ = shapes_batch
    assert images.shape == (8, 3, 64, 64) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    assert to_tensor(ShapesWorld("train", 0)[0].image, 32).shape == (1, 3, 32, 32)


def test_clip_tokens_are_last_block_patches_without_cls(clip_encoder, shapes_batch):
    images, _ = shapes_batch
    with torch.no_grad():
        tokens = clip_encoder.encode(images)
        out = clip_encoder.model.vision_model(pixel_values=clip_encoder.preprocess(images), output_hidden_states=True)
    assert tokens.shape == (8, GRID * GRID, 32)  # 64 px / patch 8 = 8x8: pooling is the identity
    assert out.hidden_states[-1].shape[1] == GRID * GRID + 1  # CLS + patches
    torch.testing.assert_close(tokens, out.hidden_states[-1][:, 1:], rtol=0, atol=0)
    torch.testing.assert_close(tokens, out.last_hidden_state[:, 1:], rtol=0, atol=0)  # before the post-layernorm


def test_clip_pools_a_larger_grid_to_8x8():
    torch.manual_seed(0)
    cfg = TargetConfig(model=TINY_CLIP, image_size=128)
    encoder = build_target_encoder(cfg, text_vocab_size=VOCAB, eos_token_id=EOS)
    images = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        tokens = encoder.encode(images)
        states = encoder.model.vision_model(pixel_values=encoder.preprocess(images), output_hidden_states=True)
    patches = states.hidden_states[-1][:, 1:]  # 16x16 patches, CLS dropped by hand
    grid = patches.transpose(1, 2).reshape(2, 32, 16, 16)
    expected = F.avg_pool2d(grid, 2).flatten(2).transpose(1, 2)
    assert tokens.shape == (2, 64, 32)
    torch.testing.assert_close(tokens, expected)


def test_contrastive_loss_falls_on_a_fixed_batch(shapes_batch):
    torch.manual_seed(0)
    encoder = build_target_encoder(TargetConfig(model=TINY_CLIP), text_vocab_size=VOCAB, eos_token_id=EOS)
    images, captions = shapes_batch
    ids, mask = tokenize(captions)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):  # it sits near ln(8) for ~10 steps, then falls
        loss = encoder.contrastive_loss(images, ids, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert losses[-1] < 0.6 * losses[0], losses


def test_clip_end_token_checks(clip_encoder, shapes_batch):
    with pytest.raises(ValueError, match="eos_token_id"):
        build_target_encoder(TargetConfig(model=TINY_CLIP), text_vocab_size=VOCAB, eos_token_id=2)
    with pytest.raises(ValueError, match="end token"):
        clip_encoder.contrastive_loss(shapes_batch[0][:2], torch.full((2, 5), FIRST_WORD))


def test_feature_standardisation_round_trip(clip_encoder, shapes_batch):
    encoder = build_target_encoder(TargetConfig(model=TINY_CLIP), text_vocab_size=VOCAB, eos_token_id=EOS)
    with torch.no_grad():
        tokens = encoder.encode(shapes_batch[0])
    encoder.fit_feature_stats(tokens)
    standard = encoder.normalize(tokens)
    torch.testing.assert_close(standard.mean(dim=(0, 1)), torch.zeros(32), atol=1e-4, rtol=0)
    torch.testing.assert_close(encoder.denormalize(standard), tokens, atol=1e-5, rtol=1e-5)


def test_vae_target_grid_is_8x8(shapes_batch):
    torch.manual_seed(0)
    encoder = build_target_encoder(TargetConfig(kind="vae", model={"vae": TINY_VAE_TARGET}))
    assert isinstance(encoder, VAETargetEncoder) and encoder.token_dim == 4
    images = shapes_batch[0][:2]
    with torch.no_grad():
        tokens = encoder.encode(images)
        pixels = encoder.decode(tokens)
    assert tokens.shape == (2, 64, 4)
    assert pixels.shape == (2, 3, 64, 64) and 0 <= pixels.min() and pixels.max() <= 1
    assert torch.isfinite(encoder.vae_loss(images))
    with pytest.raises(ValueError, match="grid"):
        build_target_encoder(TargetConfig(kind="vae", model={"vae": TINY_VAE_TARGET}, image_size=32))


def test_encoder_save_load_strict(tmp_path, clip_encoder, shapes_batch):
    cfg = TargetConfig(model=TINY_CLIP)
    clip_encoder.save_pretrained(tmp_path / "clip")
    loaded = load_target_encoder(tmp_path / "clip", cfg)
    with torch.no_grad():
        assert torch.equal(loaded.encode(shapes_batch[0]), clip_encoder.encode(shapes_batch[0]))
    with pytest.raises(CheckpointError, match="nothing-here is missing"):
        load_target_encoder(tmp_path / "nothing-here", cfg)
    (tmp_path / "clip" / "target_encoder.json").rename(tmp_path / "moved.json")
    with pytest.raises(CheckpointError, match="lacks target_encoder.json"):
        load_target_encoder(tmp_path / "clip", cfg)
    (tmp_path / "moved.json").rename(tmp_path / "clip" / "target_encoder.json")
    weights = tmp_path / "clip" / "target_encoder.safetensors"
    state = load_file(str(weights))
    state["feature_mean"] = torch.zeros(7)
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match="mismatched keys: feature_mean"):
        CLIPTargetEncoder.from_pretrained(tmp_path / "clip", cfg)
    state.pop("feature_mean")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match="missing keys: feature_mean.*unexpected keys: extra.weight"):
        CLIPTargetEncoder.from_pretrained(tmp_path / "clip", cfg)


def test_eva_clip_builds_tiny_and_pools():
    pytest.importorskip("timm", reason="timm (with a torchvision matching torch) is not importable here")
    from openblip3o.models.encoders import EVACLIPTargetEncoder

    cfg = TargetConfig(encoder="eva_clip", image_size=64, model={"eva": {"embed_dim": 32, "depth": 2, "num_heads": 2,
                                                                         "patch_size": 4}})
    torch.manual_seed(0)
    encoder = build_target_encoder(cfg)
    assert isinstance(encoder, EVACLIPTargetEncoder)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        tokens = encoder.encode(images)
        blocks = encoder.model.forward_intermediates(encoder.preprocess(images), indices=1, output_fmt="NLC",
                                                     intermediates_only=True, return_prefix_tokens=True)
    patches, prefix = blocks[-1]
    assert prefix.shape == (2, 1, 32) and patches.shape == (2, 256, 32)  # CLS apart, 16x16 patches
    expected = F.avg_pool2d(patches.transpose(1, 2).reshape(2, 32, 16, 16), 2).flatten(2).transpose(1, 2)
    assert tokens.shape == (2, 64, 32)
    torch.testing.assert_close(tokens, expected)
    with torch.device("meta"):  # the same code path allocates nothing on the meta device
        on_meta = build_target_encoder(cfg)
    assert sum(p.numel() for p in on_meta.parameters()) == sum(p.numel() for p in encoder.parameters())


def test_eva_clip_loads_local_open_clip_weights(tmp_path):
    pytest.importorskip("timm", reason="timm (with a torchvision matching torch) is not importable here")
    eva = {"eva": {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 4}}
    small = build_target_encoder(TargetConfig(encoder="eva_clip", image_size=32, model=eva))
    # an open_clip-style file at a smaller image size, with the projection head and final norm it does not use
    state = {f"visual.{k}": v for k, v in small.model.state_dict().items()}
    state |= {"visual.head.weight": torch.zeros(8, 32), "visual.norm.weight": torch.ones(32)}
    save_file(state, str(tmp_path / "eva.safetensors"))
    cfg = TargetConfig(encoder="eva_clip", image_size=64, model=eva, pretrained_path=str(tmp_path))
    loaded = build_target_encoder(cfg)  # the 8x8 position table is resampled to 16x16
    assert torch.equal(loaded.model.blocks[1].mlp.fc2.weight, small.model.blocks[1].mlp.fc2.weight)
    state["visual.blocks.0.attn.proj.weight"] = torch.zeros(3, 3)
    save_file(state, str(tmp_path / "eva.safetensors"))
    with pytest.raises(CheckpointError, match="mismatched keys: blocks.0.attn.proj.weight"):
        build_target_encoder(cfg)


# --- decoder ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    return DiffusionDecoder(tiny_decoder_config(), TOKEN_DIM, GRID).eval()  # as from_pretrained returns it


@pytest.fixture(scope="module")
def tokens():
    return torch.randn(3, GRID * GRID, TOKEN_DIM, generator=torch.Generator().manual_seed(1))


def test_decoder_shapes_and_channels(decoder, tokens):
    assert decoder.unet.config.in_channels == 4 + 8 and decoder.latent_size == 8
    images = torch.rand(3, 3, 32, 32)
    assert decoder.encode_latents(images).shape == (3, 4, 8, 8)
    assert decoder(torch.randn(3, 4, 8, 8), torch.full((3,), 500.0), tokens).shape == (3, 4, 8, 8)
    out = decoder.decode(tokens, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 3, 32, 32) and 0 <= out.min() and out.max() <= 1
    assert torch.isfinite(decoder.vae_loss(images))
    with pytest.raises(ValueError, match="in_channels"):
        DiffusionDecoder(tiny_decoder_config(unet={**tiny_decoder_config().unet, "in_channels": 4}), TOKEN_DIM, GRID)


def test_decoder_loss_falls_when_overfitting(tokens):
    torch.manual_seed(0)
    decoder = DiffusionDecoder(tiny_decoder_config(), TOKEN_DIM, GRID)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    optimizer = torch.optim.AdamW([p for p in decoder.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for _ in range(30):
        # the same sigmas, noise and dropout every step: the objective itself is fixed, only the network learns
        loss = decoder.loss(images, tokens, generator=torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_guidance_one_is_the_conditional_branch_alone(decoder, tokens):
    steps = 3
    def run(uncond):
        return decoder.decode(tokens, uncond, steps, 1.0, torch.Generator().manual_seed(5))

    plain, other_uncond = run(None), run(torch.randn_like(tokens))
    assert torch.equal(plain, other_uncond)
    # by hand: Euler steps on the conditional velocity only
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    scheduler = decoder.objective.scheduler()
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        for i, sigma in enumerate(scheduler.sigmas[:-1]):
            x0 = decoder(x, torch.full((3,), float(sigma) * 1000), tokens)
            x = x + (scheduler.sigmas[i + 1] - sigma) * (x - x0) / sigma
        expected = decoder.decode_latents(x)
    torch.testing.assert_close(plain, expected, atol=1e-5, rtol=1e-5)


def test_batch_decode_equals_per_image_decode(decoder, tokens):
    seeds = [11, 12, 13]
    batch = decoder.decode(tokens, num_inference_steps=4, guidance_scale=3.0,
                           generator=[torch.Generator().manual_seed(s) for s in seeds])
    for i, seed in enumerate(seeds):
        single = decoder.decode(tokens[i:i + 1], num_inference_steps=4, guidance_scale=3.0,
                                generator=[torch.Generator().manual_seed(seed)])
        torch.testing.assert_close(batch[i:i + 1], single, atol=1e-5, rtol=0)


def test_decoder_save_load_bit_identical_and_strict(tmp_path, decoder, tokens):
    decoder.save_pretrained(tmp_path / "dec")
    loaded = DiffusionDecoder.from_pretrained(tmp_path / "dec", tiny_decoder_config())
    def decode(d):
        return d.decode(tokens, None, 3, 3.0, torch.Generator().manual_seed(3))

    assert torch.equal(decode(decoder), decode(loaded))
    assert loaded.objective_config == decoder.objective_config
    with pytest.raises(CheckpointError, match="spatial_conditioning"):
        DiffusionDecoder.from_pretrained(tmp_path / "dec", tiny_decoder_config(spatial_conditioning=False))
    condition = tmp_path / "dec" / "condition.safetensors"
    state = load_file(str(condition))
    state["position"] = state["position"][:, :10]
    save_file(state, str(condition))
    with pytest.raises(CheckpointError, match="mismatched keys: position"):
        DiffusionDecoder.from_pretrained(tmp_path / "dec", tiny_decoder_config())
    condition.unlink()
    with pytest.raises(CheckpointError, match="condition.safetensors"):
        DiffusionDecoder.from_pretrained(tmp_path / "dec", tiny_decoder_config())


def test_spatial_conditioning_off_and_sdxl_text_time(tokens):
    torch.manual_seed(0)
    off = DiffusionDecoder(tiny_decoder_config(spatial_conditioning=False), TOKEN_DIM, GRID)
    assert off.unet.config.in_channels == 4 and off.condition.spatial is None
    images = torch.rand(3, 3, 32, 32)
    assert torch.isfinite(off.loss(images, tokens))
    assert off.decode(tokens, num_inference_steps=2).shape == (3, 3, 32, 32)
    # SDXL's added conditioning: pooled tokens (cross_attention_dim wide) + six size / crop ids
    unet = {**tiny_decoder_config().unet, "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 32 + 6 * 8}
    sdxl = DiffusionDecoder(tiny_decoder_config(unet=unet), TOKEN_DIM, GRID)
    assert sdxl.text_time and torch.isfinite(sdxl.loss(images, tokens))


def test_autoencoder_reconstructs_both_kinds(shapes_batch):
    torch.manual_seed(0)
    images = shapes_batch[0][:2]
    target = TargetConfig(model=TINY_CLIP)
    encoder = build_target_encoder(target, text_vocab_size=VOCAB, eos_token_id=EOS)
    decoder = build_decoder(tiny_decoder_config(image_size=64), target, encoder.token_dim)
    out = Autoencoder(encoder, decoder).reconstruct(images, num_inference_steps=2, guidance_scale=2.0,
                                                    generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 64, 64)
    vae_target = TargetConfig(kind="vae", model={"vae": TINY_VAE_TARGET})
    assert build_decoder(tiny_decoder_config(), vae_target, 4) is None
    assert Autoencoder(build_target_encoder(vae_target)).reconstruct(images).shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="needs a DiffusionDecoder"):
        Autoencoder(encoder)


def test_mini_defaults_build():
    encoder = build_target_encoder(TargetConfig(model=ENCODER_DEFAULTS), text_vocab_size=VOCAB, eos_token_id=EOS)
    assert encoder.token_dim == 192 and encoder.grid_size == 8
    assert build_target_encoder(TargetConfig(kind="vae", model=ENCODER_DEFAULTS)).token_dim == 4
    assert DiffusionDecoder(DecoderConfig(**DECODER_DEFAULTS), 192, 8).objective_config == ObjectiveConfig(
        prediction="sample", condition_dropout=0.1)


def test_decoder_conditioning_augmentation_noises_each_sample_in_the_target_space():
    """DecoderTask(condition_noise=s): the decoder trains on tokens noised in the DiT's target space at a per-sample
    level in [0, s]; at s = 0 on the encoder's exact tokens."""
    from openblip3o.data.sources import ShapesSource
    from openblip3o.training.stages.autoencoder import DecoderTask

    torch.manual_seed(0)
    model = BLIP3oPipeline.from_preset("mini", tiny_config()).model
    encoder, level = model.target_encoder, 0.5
    task = DecoderTask(model.decoder, encoder, ShapesSource("train", 0), condition_noise=level)
    batch = task.batch(0, 8)
    seen = []
    model.decoder.loss = (lambda images, tokens, generator=None, level=None:
                          seen.append(tokens) or tokens.pow(2).mean())
    task.loss(batch, torch.Generator().manual_seed(0))
    moved = (encoder.normalize(seen[0]) - encoder.normalize(batch["tokens"])).pow(2).mean((1, 2)).sqrt()
    assert (moved > 0).all() and (moved <= 1.2 * level).all(), moved  # RMS of level x N(0, 1): at most ~level
    assert moved.max() > 2 * moved.min(), moved  # levels drawn per sample, not one for the batch
    exact = DecoderTask(model.decoder, encoder, ShapesSource("train", 0))
    exact.loss(batch, torch.Generator().manual_seed(0))
    assert torch.equal(seen[1], batch["tokens"])
    with pytest.raises(ValueError, match="condition_noise"):
        DecoderTask(model.decoder, encoder, ShapesSource("train", 0), condition_noise=-1.0)


def test_level_conditioned_decoder_starts_as_the_unconditioned_one_then_reads_the_level(tmp_path, tokens):
    """decoder.level_conditioning: the token-noise level enters the UNet as diffusers' upscaler feeds its noise
    level (class labels of type "timestep"). Added to a trained decoder it starts zeroed, so the decoder draws exactly
    as before until training moves it; then the level matters, it must be given, and it survives save / load."""
    torch.manual_seed(0)
    leveled = DiffusionDecoder(tiny_decoder_config(), TOKEN_DIM, GRID).eval()
    decode = lambda d, level: d.decode(tokens, None, 2, 1.0, torch.Generator().manual_seed(3), level=level)
    before = decode(leveled, 0.0)
    leveled.add_level_conditioning()
    assert leveled.cfg.level_conditioning and leveled.unet.config.class_embed_type == "timestep"
    assert torch.equal(decode(leveled, 1.5), before)
    with torch.no_grad():
        torch.nn.init.normal_(leveled.unet.class_embedding.linear_2.weight, std=0.5)
    assert not torch.allclose(decode(leveled, 0.0), decode(leveled, 1.5), atol=1e-3)
    with pytest.raises(ValueError, match="token-noise level"):
        leveled.loss(torch.rand(3, 3, 32, 32), tokens)
    assert torch.isfinite(leveled.loss(torch.rand(3, 3, 32, 32), tokens, level=torch.tensor([0.0, 1.0, 2.0])))
    leveled.save_pretrained(tmp_path / "dec")
    loaded = DiffusionDecoder.from_pretrained(tmp_path / "dec", tiny_decoder_config(level_conditioning=True))
    assert torch.equal(decode(loaded, 1.5), decode(leveled, 1.5))
    with pytest.raises(CheckpointError, match="level_conditioning"):
        DiffusionDecoder.from_pretrained(tmp_path / "dec", tiny_decoder_config())
    with pytest.raises(ValueError, match="already"):
        leveled.add_level_conditioning()


def test_decoder_task_passes_each_sample_its_noise_level():
    """With level conditioning the decoder is told each row's augmentation level (0 for exact-token training)."""
    from openblip3o.data.sources import ShapesSource
    from openblip3o.training.stages.autoencoder import DecoderTask

    torch.manual_seed(0)
    config = tiny_config()
    config.decoder.level_conditioning = True
    model = BLIP3oPipeline.from_preset("mini", config).model
    encoder = model.target_encoder
    task = DecoderTask(model.decoder, encoder, ShapesSource("train", 0), condition_noise=2.0)
    batch = task.batch(0, 8)
    assert torch.isfinite(task.loss(batch, torch.Generator().manual_seed(0))[0])
    seen = []
    model.decoder.loss = lambda images, tokens, generator=None, level=None: seen.append((tokens, level)) or tokens.sum()
    task.loss(batch, torch.Generator().manual_seed(0))
    tokens, level = seen[0]
    moved = (encoder.normalize(tokens) - encoder.normalize(batch["tokens"])).pow(2).mean((1, 2)).sqrt()
    assert level.shape == (8,) and ((level >= 0) & (level <= 2.0)).all()
    assert torch.corrcoef(torch.stack([moved, level]))[0, 1] > 0.95  # the level told is the noise added
    DecoderTask(model.decoder, encoder, ShapesSource("train", 0)).loss(batch, torch.Generator().manual_seed(0))
    assert torch.equal(seen[1][1], torch.zeros(8))
    half = DecoderTask(model.decoder, encoder, ShapesSource("train", 0), condition_noise=2.0, exact_rate=0.5)
    half.loss(task.batch(0, 64), torch.Generator().manual_seed(0))
    tokens, level = seen[2]
    exact = level == 0
    assert 16 <= int(exact.sum()) <= 48, level  # about half the rows kept exact, and told so
    round_trip = encoder.denormalize(encoder.normalize(task.batch(0, 64)["tokens"]))  # the DiT's target space
    assert torch.allclose(tokens[exact], round_trip[exact]) and (level[~exact] > 0).all()
    with pytest.raises(ValueError, match="exact_rate"):
        DecoderTask(model.decoder, encoder, ShapesSource("train", 0), exact_rate=1.5)
