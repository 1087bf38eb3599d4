"""The generator's principal-component view of the target features (TargetConfig.principal_components)."""

from __future__ import annotations

import pytest
import torch

from openblip3o.config import TargetConfig
from openblip3o.data.shapes import ShapesWorld
from openblip3o.models.encoders import CLIPTargetEncoder, build_target_encoder, to_tensor
from openblip3o.models.principal import PrincipalComponents

from test_encoders_decoder import EOS, TINY_CLIP, VOCAB  # the same tiny CLIP as the encoder tests


def low_rank_tokens(rank: int, dim: int = 24, count: int = 400) -> torch.Tensor:
    """(4, count/4, dim) tokens that lie exactly in a `rank`-dimensional affine subspace."""
    g = torch.Generator().manual_seed(0)
    coords = torch.randn(count, rank, generator=g) * torch.linspace(3, 1, rank)
    basis = torch.linalg.qr(torch.randn(dim, rank, generator=g))[0].T  # (rank, dim) orthonormal rows
    return (coords @ basis + torch.randn(dim, generator=g)).reshape(4, count // 4, dim)


def test_fit_keeps_a_subspace_exactly_and_scales_to_unit_mean_square():
    tokens = low_rank_tokens(rank=5)
    pca = PrincipalComponents(24, 5)
    kept = pca.fit(tokens)
    assert kept == pytest.approx(1.0, abs=1e-5)
    coords = pca.project(tokens)
    assert coords.shape == (4, 100, 5)
    assert coords.pow(2).mean().item() == pytest.approx(1.0, rel=1e-4)
    torch.testing.assert_close(pca.lift(coords), tokens, atol=1e-4, rtol=1e-4)
    # Fewer components than the data's rank lose what the dropped ones held, and say so.
    fewer = PrincipalComponents(24, 2)
    assert fewer.fit(tokens) < 0.95
    assert (fewer.lift(fewer.project(tokens)) - tokens).abs().max() > 0.1


def test_whitened_components_have_unit_variance_each_and_still_lift_back_exactly(tmp_path):
    tokens = low_rank_tokens(rank=5)  # component stds 3 .. 1
    plain, white = PrincipalComponents(24, 5), PrincipalComponents(24, 5, whiten=True)
    plain.fit(tokens), white.fit(tokens)
    spread = plain.project(tokens).reshape(-1, 5).std(0)
    assert spread.max() / spread.min() > 2  # unwhitened: the first component dominates
    torch.testing.assert_close(white.project(tokens).reshape(-1, 5).std(0), torch.ones(5), atol=1e-2, rtol=0)
    torch.testing.assert_close(white.lift(white.project(tokens)), tokens, atol=1e-4, rtol=1e-4)
    assert not white.needs_fit and bool(white.whitened)
    # A module fitted without whitening needs a refit once whitening is asked for (and the reverse).
    reconfigured = PrincipalComponents(24, 5, whiten=True)
    reconfigured.load_state_dict(plain.state_dict())
    assert reconfigured.needs_fit
    unwhitened = PrincipalComponents(24, 5)
    unwhitened.load_state_dict(white.state_dict())
    assert unwhitened.needs_fit


def test_unfitted_components_keep_the_first_channels_and_bad_sizes_are_clear():
    pca = PrincipalComponents(8, 4)  # an untrained model still runs: the first K channels, unscaled
    tokens = torch.randn(1, 2, 8)
    torch.testing.assert_close(pca.project(tokens), tokens[..., :4])
    assert not bool(pca.fitted)
    with pytest.raises(ValueError, match="principal_components must be in 1..8"):
        PrincipalComponents(8, 9)


@pytest.fixture(scope="module")
def images():
    world = ShapesWorld("train", seed=0)
    return to_tensor([world[i].image for i in range(16)], 64)


def test_target_encoder_gives_the_generator_k_channels_and_lifts_back(tmp_path, images):
    torch.manual_seed(0)
    cfg = TargetConfig(model=TINY_CLIP, principal_components=6)
    encoder = build_target_encoder(cfg, text_vocab_size=VOCAB, eos_token_id=EOS)
    assert encoder.token_dim == 32 and encoder.latent_dim == 6 and encoder.needs_principal_fit
    with torch.no_grad():
        tokens = encoder.encode(images)
    encoder.fit_feature_stats(tokens)  # fits the components too
    assert not encoder.needs_principal_fit
    latent = encoder.normalize(tokens)
    assert latent.shape == (16, 64, 6)
    lifted = encoder.denormalize(latent)
    assert lifted.shape == tokens.shape
    # The lift is the projection onto the kept components: applying it twice changes nothing.
    torch.testing.assert_close(encoder.denormalize(encoder.normalize(lifted)), lifted, atol=1e-4, rtol=1e-4)
    # Saved and loaded with the components; an encoder saved before they were configured loads them unfitted.
    encoder.save_pretrained(tmp_path / "with")
    loaded = CLIPTargetEncoder.from_pretrained(tmp_path / "with", cfg)
    torch.testing.assert_close(loaded.normalize(tokens), latent)
    plain = build_target_encoder(TargetConfig(model=TINY_CLIP), text_vocab_size=VOCAB, eos_token_id=EOS)
    plain.save_pretrained(tmp_path / "plain")
    upgraded = CLIPTargetEncoder.from_pretrained(tmp_path / "plain", cfg)
    assert upgraded.needs_principal_fit
    assert upgraded.normalize(tokens).shape == (16, 64, 6)


def test_generation_stage_fits_the_components_and_sampling_returns_full_width_tokens():
    from openblip3o.models.generator import Generator
    from openblip3o.models.unified import BLIP3oModel
    from openblip3o.training.stages.generation import GenerationTask

    from tiny import tiny_config

    torch.manual_seed(0)
    config = tiny_config(target={"principal_components": 8})
    model = BLIP3oModel.from_config(config)
    assert model.generator.dit.config.in_channels == 8 and model.target_encoder.needs_principal_fit
    task = GenerationTask(model, seed=0)
    assert not model.target_encoder.needs_principal_fit
    loss, _ = task.loss(task.batch(0, 4), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()
    tokens = model.sample_tokens(["a photo of a red circle"], generator=torch.Generator().manual_seed(0),
                                 num_inference_steps=2)
    assert tokens.shape == (1, 64, model.target_encoder.token_dim)
    wrong = Generator(config.generator, model.target_encoder.token_dim, config.target.grid_size,
                      model.backbone.condition_dim)
    with pytest.raises(ValueError, match="principal_components"):
        BLIP3oModel(config, model.backbone, wrong, model.target_encoder, model.decoder)


def test_vae_targets_ignore_the_setting_so_the_design_switch_stays_one_value():
    from test_encoders_decoder import TINY_VAE_TARGET

    encoder = build_target_encoder(TargetConfig(kind="vae", model={"vae": TINY_VAE_TARGET}, principal_components=32))
    assert encoder.principal is None and encoder.latent_dim == encoder.token_dim == 4
