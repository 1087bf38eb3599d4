"""The DiT (real LuminaNextDiT2DModel at tiny size) and the objectives, kept apart."""

import pytest
import torch

from openblip3o.config import GeneratorConfig, ObjectiveConfig
from openblip3o.models.generator import Generator
from openblip3o.models.loading import CheckpointError
from openblip3o.objectives import FlowMatching, MSERegression, build_objective, drop_condition
from diffusers.utils.torch_utils import randn_tensor

CHANNELS, GRID, COND_DIM, COND_LEN = 8, 8, 32, 6
TINY = GeneratorConfig(hidden_size=64, num_layers=2, num_attention_heads=4, num_kv_heads=4)


def tiny_generator(seed=0):
    torch.manual_seed(seed)
    return Generator(TINY, CHANNELS, GRID, COND_DIM)


def batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, CHANNELS, GRID, GRID, generator=g), torch.randn(n, COND_LEN, COND_DIM, generator=g)


def test_shapes_and_a_real_prediction():
    net = tiny_generator()
    x0, cond = batch()
    out = net(x0, torch.full((4,), 500.0), cond)
    assert out.shape == x0.shape and out.abs().sum() > 0
    assert type(net.dit).__name__ == "LuminaNextDiT2DModel"


@pytest.mark.parametrize("name", ["flow_matching", "mse"])
def test_loss_falls_when_overfitting_one_batch(name):
    net, objective = tiny_generator(), build_objective(ObjectiveConfig(name=name, condition_dropout=0.0))
    x0, cond = batch()
    # Regression must learn through the zero-initialised cross-attention gates alone: it needs more steps.
    steps, lr = (40, 2e-3) if name == "flow_matching" else (120, 5e-3)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        loss = objective.loss(net, x0, cond, generator=torch.Generator().manual_seed(step % 4))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses


def test_condition_dropout_zeroes_whole_rows_at_the_set_rate():
    cond = torch.ones(4000, 3, 2)
    dropped = drop_condition(cond, 0.1, torch.Generator().manual_seed(0))
    rows = dropped.flatten(1)
    assert set(rows.sum(1).tolist()) <= {0.0, 6.0}
    assert abs((rows.sum(1) == 0).float().mean().item() - 0.1) < 0.02


def test_guidance_one_equals_the_conditional_prediction():
    net, fm = tiny_generator(), FlowMatching(ObjectiveConfig())
    _, cond = batch(2)
    noise = torch.randn(2, CHANNELS, GRID, GRID, generator=torch.Generator().manual_seed(1))
    guided = fm.sample(net, noise, cond, guidance_scale=1.0, num_inference_steps=5)
    # Same walk by hand with the conditional velocity only.
    scheduler = fm.scheduler()
    scheduler.set_timesteps(5)
    x = noise
    for t, sigma in zip(scheduler.timesteps, scheduler.sigmas[:-1]):
        v = net(x, (sigma * 1000).expand(2), cond)
        x = scheduler.step(v, t, x, return_dict=False)[0]
    assert torch.allclose(guided, x, atol=1e-6)
    assert not torch.allclose(guided, fm.sample(net, noise, cond, guidance_scale=3.0, num_inference_steps=5))


def test_batched_sampling_equals_one_by_one_with_per_image_generators():
    net, fm = tiny_generator(), FlowMatching(ObjectiveConfig())
    _, cond = batch(4)
    shape = (CHANNELS, GRID, GRID)
    gens = [torch.Generator().manual_seed(100 + i) for i in range(4)]
    together = fm.sample(net, randn_tensor((4, *shape), generator=gens), cond, num_inference_steps=4)
    for i in range(4):
        noise = randn_tensor((1, *shape), generator=torch.Generator().manual_seed(100 + i))
        alone = fm.sample(net, noise, cond[i : i + 1], num_inference_steps=4)
        assert torch.allclose(together[i : i + 1], alone, atol=1e-5)


def test_sample_prediction_is_converted_to_a_velocity():
    fm = FlowMatching(ObjectiveConfig(prediction="sample"))
    x0, _ = batch(2)
    oracle = lambda x, t, c, m: x0  # noqa: E731  a network that knows the answer
    noise = torch.randn_like(x0)
    out = fm.sample(oracle, noise, torch.zeros(2, COND_LEN, COND_DIM), guidance_scale=1.0, num_inference_steps=10)
    assert torch.allclose(out, x0, atol=1e-3)


def test_mse_samples_in_one_deterministic_step():
    net = tiny_generator()
    _, cond = batch(2)
    mse = MSERegression(ObjectiveConfig(name="mse"))
    a = mse.sample(net, torch.randn(2, CHANNELS, GRID, GRID), cond)
    b = mse.sample(net, torch.randn(2, CHANNELS, GRID, GRID), cond)
    assert torch.equal(a, b)


def test_save_load_bit_identical_and_strict(tmp_path):
    net = tiny_generator()
    x0, cond = batch(2)
    t = torch.tensor([10.0, 900.0])
    net.save_pretrained(tmp_path / "g")
    loaded = Generator.from_pretrained(tmp_path / "g")
    assert torch.equal(net(x0, t, cond), loaded(x0, t, cond))
    with pytest.raises(CheckpointError, match="lacks config.json"):
        (tmp_path / "empty").mkdir()
        Generator.from_pretrained(tmp_path / "empty")
    wider = Generator(GeneratorConfig(hidden_size=128, num_layers=2, num_attention_heads=4, num_kv_heads=4), CHANNELS, GRID, COND_DIM)
    wider.save_pretrained(tmp_path / "w")
    (tmp_path / "g" / "diffusion_pytorch_model.safetensors").replace(tmp_path / "w" / "diffusion_pytorch_model.safetensors")
    with pytest.raises((CheckpointError, ValueError, RuntimeError), match="(?i)mismatch|size"):
        Generator.from_pretrained(tmp_path / "w")


def test_dtype_casts_keep_the_rotary_positions():
    """`.to(dtype)` (as `from_pretrained(torch_dtype=...)` does) must not touch the complex rotary table: casting it
    to a real dtype drops the rotation and leaves the DiT blind to where each token is."""
    net = tiny_generator()
    x0, cond = batch(2)
    t = torch.tensor([10.0, 900.0])
    before = net(x0, t, cond)
    net.to(torch.float32)
    assert net.rotary(x0.device).is_complex()
    assert torch.equal(before, net(x0, t, cond))
    # and the positions matter: the same tokens, their grid transposed, give a prediction that is not just transposed
    out = net(x0.transpose(-1, -2), t, cond)
    assert not torch.allclose(out, before.transpose(-1, -2), atol=1e-4)
