"""Probability paths, time sampling, the wavelet loss, ODE solvers and classifier-free guidance."""

from __future__ import annotations

import math

import pytest
import torch

from flowlet.errors import FlowletError
from flowlet.generative.flows import FLOW_NAMES, get_flow, time_sampler
from flowlet.generative.loss import wavelet_flow_loss
from flowlet.generative.solvers import apply_guidance, guided_velocity, integrate
from flowlet.generative.unet import FlowUNet, UNetConfig


@pytest.fixture
def endpoints():
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 8, 3, 3, 3, generator=generator, dtype=torch.float64)
    x1 = torch.randn(4, 8, 3, 3, 3, generator=generator, dtype=torch.float64)
    return x0, x1


@pytest.mark.parametrize("name", FLOW_NAMES)
def test_target_is_the_time_derivative_of_the_path(name, endpoints):
    flow = get_flow(name)
    x0, x1 = endpoints
    t = torch.tensor([0.05, 0.3, 0.6, 0.9], dtype=torch.float64)
    step = 1e-6
    x_t, target = flow.sample_path(x0, x1, t)
    ahead, _ = flow.sample_path(x0, x1, t + step)
    behind, _ = flow.sample_path(x0, x1, t - step)
    assert x_t.shape == target.shape == x0.shape
    torch.testing.assert_close(target, (ahead - behind) / (2 * step), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["rectified", "cfm", "trigonometric"])
def test_paths_run_from_noise_to_data(name, endpoints):
    flow = get_flow(name)
    x0, x1 = endpoints
    start, _ = flow.sample_path(x0, x1, torch.zeros(4, dtype=torch.float64))
    end, _ = flow.sample_path(x0, x1, torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(start, x0)
    torch.testing.assert_close(end, x1)


def test_vp_path_is_variance_preserving_and_nearly_noise_to_data(endpoints):
    flow = get_flow("vp")
    x0, x1 = endpoints
    start, _ = flow.sample_path(x0, x1, torch.zeros(4, dtype=torch.float64))
    end, velocity = flow.sample_path(x0, x1, torch.ones(4, dtype=torch.float64))
    alpha = math.exp(-(0.1 + 0.5 * (20 - 0.1)) / 2)  # ~0.0066: t = 0 is almost pure noise
    torch.testing.assert_close(start, alpha * x1 + math.sqrt(1 - alpha**2) * x0)
    assert (end - x1).abs().max() < 0.01
    assert torch.isfinite(velocity).all()  # t is capped below the singular endpoint
    # With independent unit-variance x0 and x1 the path keeps unit variance: alpha^2 + sigma^2 = 1.
    big0, big1 = torch.randn(2, 200_000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for t in (0.2, 0.5, 0.8):
        x_t, _ = flow.sample_path(big0[None], big1[None], torch.tensor([t], dtype=torch.float64))
        assert x_t.var().item() == pytest.approx(1.0, abs=0.02)


def test_cfm_equals_rectified_target_and_stays_finite_at_the_end(endpoints):
    x0, x1 = endpoints
    t = torch.tensor([0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    _, cfm = get_flow("cfm").sample_path(x0, x1, t)
    _, rectified = get_flow("rfm").sample_path(x0, x1, t)
    torch.testing.assert_close(cfm[:3], rectified[:3])
    assert torch.isfinite(cfm).all()


def test_trigonometric_target_matches_the_paper(endpoints):
    x0, x1 = endpoints
    t = torch.full((4,), 0.25, dtype=torch.float64)
    _, target = get_flow("trig").sample_path(x0, x1, t)
    angle = math.pi * 0.25 / 2
    torch.testing.assert_close(target, (math.pi / 2) * (math.cos(angle) * x1 - math.sin(angle) * x0))


def test_unknown_flow_and_sampler_are_user_errors():
    with pytest.raises(FlowletError, match="rectified"):
        get_flow("ddpm")
    with pytest.raises(FlowletError, match="uniform"):
        time_sampler("beta")


def test_time_samplers():
    generator = torch.Generator().manual_seed(0)
    for name in ("uniform", "logit_normal", "stratified"):
        t = time_sampler(name)(10_000, generator=generator)
        assert t.shape == (10_000,) and t.min() >= 0 and t.max() <= 1, name
        assert t.mean().item() == pytest.approx(0.5, abs=0.02), name
    stratified = time_sampler("stratified")(8, generator=generator)
    assert torch.equal(torch.floor(stratified * 8), torch.arange(8, dtype=stratified.dtype))
    logit_normal = time_sampler("logit_normal")(10_000, generator=generator)
    uniform = time_sampler("uniform")(10_000, generator=generator)
    middle = lambda t: ((t > 0.25) & (t < 0.75)).float().mean().item()  # noqa: E731
    assert middle(logit_normal) > middle(uniform) + 0.1
    assert get_flow("vp").default_time_sampling == "stratified"
    assert get_flow("rectified").default_time_sampling == "uniform"


def test_wavelet_loss_separates_low_pass_and_detail_channels():
    target = torch.zeros(2, 16, 2, 2, 2)
    pred = torch.zeros(2, 16, 2, 2, 2)
    pred[:, 0] = 2.0  # LLL of input channel 0
    pred[:, 8] = 4.0  # LLL of input channel 1 (channel = c*8 + band)
    pred[:, 3] = 1.0  # a detail band
    total, lll, detail = wavelet_flow_loss(pred, target, lll_weight=2.0, detail_weight=0.5)
    assert lll.item() == pytest.approx((4 + 16) / 2)
    assert detail.item() == pytest.approx(1 / 14)
    assert total.item() == pytest.approx(2.0 * 10 + 0.5 / 14)
    with pytest.raises(FlowletError):
        wavelet_flow_loss(pred[:, :7], target[:, :7])


def test_wavelet_loss_has_gradients():
    pred = torch.randn(1, 8, 2, 2, 2, requires_grad=True)
    wavelet_flow_loss(pred, torch.zeros_like(pred))[0].backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_euler_is_the_explicit_loop_on_i_over_n():
    seen = []

    def velocity(x, t):
        seen.append(t.clone())
        return torch.cos(x) + t[:, None]

    x0 = torch.randn(3, 5)
    out = integrate(velocity, x0, 4)
    expected = x0.clone()
    for i in range(4):
        expected = expected + (torch.cos(expected) + i / 4) / 4
    torch.testing.assert_close(out, expected)
    assert [float(t[0]) for t in seen] == [0.0, 0.25, 0.5, 0.75]
    assert all(t.shape == (3,) for t in seen)
    torch.testing.assert_close(integrate(velocity, x0, 4), out)  # deterministic


def test_second_order_solvers_beat_euler_on_a_linear_ode():
    # dx/dt = (a + b t) x  ->  x(1) = x0 exp(a + b/2)
    a, b = -1.5, 2.0
    velocity = lambda x, t: (a + b * t[:, None]) * x  # noqa: E731
    x0 = torch.tensor([[1.0], [-2.0]], dtype=torch.float64)
    exact = x0 * math.exp(a + b / 2)
    errors = {m: (integrate(velocity, x0, 10, m) - exact).abs().max().item() for m in ("euler", "heun", "midpoint")}
    assert errors["heun"] < errors["euler"] / 5
    assert errors["midpoint"] < errors["euler"] / 5
    for method in ("heun", "midpoint"):  # second order: halving the step cuts the error about 4x
        coarse, fine = ((integrate(velocity, x0, n, method) - exact).abs().max().item() for n in (40, 80))
        assert coarse / fine == pytest.approx(4, rel=0.15), method


def test_solver_arguments_are_checked():
    with pytest.raises(FlowletError, match="rk4"):
        integrate(lambda x, t: x, torch.zeros(1, 1), 4, "rk4")
    with pytest.raises(FlowletError, match="num_steps"):
        integrate(lambda x, t: x, torch.zeros(1, 1), 0)


def test_guidance_combines_conditional_and_unconditional_velocities():
    v_cond, v_uncond = torch.tensor([3.0]), torch.tensor([1.0])
    assert apply_guidance(v_cond, v_uncond, 1.0).item() == 3.0
    assert apply_guidance(v_cond, v_uncond, 0.0).item() == 1.0
    assert apply_guidance(v_cond, v_uncond, 2.5).item() == 6.0

    config = UNetConfig(
        model_channels=16,
        num_res_blocks=1,
        channel_mult=(1, 2),
        attention_resolutions=(2,),
        num_heads=2,
        norm_num_groups=4,
        condition_embedding_dim=8,
        condition_dropout=0.1,
        model_input_size=(16, 16, 16),
        save_size=(16, 16, 16),
    )
    torch.manual_seed(0)
    model = FlowUNet(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.1)
    x = torch.randn(2, 8, 4, 4, 4)
    t = torch.tensor([0.3, 0.3])
    ages = {"Age": torch.tensor([[0.2], [0.8]])}
    with torch.no_grad():
        conditional = model(x, t, ages)
        unconditional = model(x, t, None)
        guided = guided_velocity(model, ages, guidance_scale=3.0)(x, t)
        plain = guided_velocity(model, ages)(x, t)
    torch.testing.assert_close(plain, conditional)
    torch.testing.assert_close(guided, unconditional + 3.0 * (conditional - unconditional), atol=1e-5, rtol=1e-4)
