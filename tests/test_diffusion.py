import pytest
import torch

from kinema.diffusion.objectives import (
    EpsilonObjective,
    FlowObjective,
    keep_given,
    latent_foreground_weight,
    masked_mse,
)
from kinema.diffusion.samplers import (
    classifier_free_guidance,
    ddim_sample,
    euler_sample,
    flow_ancestral_sample,
    noise_to,
    sample,
)
from kinema.diffusion.schedules import DDPMSchedule, ddim_timesteps, flow_sigmas
from kinema.dit.model import DiT, DiTConfig

X0 = torch.randn(2, 4, 3, 4, 4, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------------
# Objectives: targets match closed forms
# ---------------------------------------------------------------------------------------------------


def test_epsilon_objective_closed_forms():
    obj = EpsilonObjective()
    ac = DDPMSchedule().alphas_cumprod()
    assert ac[0] == pytest.approx(1 - 1e-4) and ac[-1] < 1e-4
    noise, t = torch.randn(X0.shape, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 999])
    x_t = obj.add_noise(X0, noise, t)
    expected = ac[0].sqrt() * X0[0].double() + (1 - ac[0]).sqrt() * noise[0].double()
    assert torch.allclose(x_t[0].double(), expected, atol=1e-5)  # float32 rounding of values up to ~3
    assert torch.equal(obj.target(X0, noise, t), noise)
    v = EpsilonObjective(prediction="v").target(X0, noise, t)
    a = ac[999].float()
    assert torch.allclose(v[1], a.sqrt() * noise[1] - (1 - a).sqrt() * X0[1], atol=1e-6)


def test_flow_objective_closed_forms():
    obj = FlowObjective()
    noise = torch.randn_like(X0)
    s = torch.tensor([0.0, 1.0])
    x_s = obj.add_noise(X0, noise, s)
    assert torch.equal(x_s[0], X0[0]) and torch.equal(x_s[1], noise[1])
    assert torch.equal(obj.target(X0, noise), noise - X0)
    sig = obj.sample_sigmas(10000, torch.Generator().manual_seed(0), "cpu")
    assert sig.min() > 0 and sig.max() < 1 and abs(sig.median() - 0.5) < 0.02


def test_losses_are_zero_for_a_model_that_knows_the_target():
    g = torch.Generator().manual_seed(3)

    def oracle_flow(x_t, t, data):
        return (x_t - data) / t.view(-1, 1, 1, 1, 1)  # v = eps - x0 = (x_t - x0) / s

    assert FlowObjective().loss(oracle_flow, X0, g, data=X0) < 1e-8
    obj = EpsilonObjective()
    ac = obj.schedule.alphas_cumprod().float()

    def oracle_eps(x_t, t, data):
        a = ac[(t * 1000).round().long()].view(-1, 1, 1, 1, 1)
        return (x_t - a.sqrt() * data) / (1 - a).sqrt()

    assert obj.loss(oracle_eps, X0, g, data=X0) < 1e-6


def test_x0_prediction_is_the_velocity_through_the_noised_point():
    obj = FlowObjective(prediction="x0")
    noise = torch.randn(X0.shape, generator=torch.Generator().manual_seed(2))
    s = torch.tensor([0.3, 0.9])
    x_t = obj.add_noise(X0, noise, s)
    assert torch.allclose(obj.velocity(X0, x_t, s), noise - X0, atol=1e-5)  # the true x0 gives the true velocity
    assert torch.equal(FlowObjective().velocity(X0, x_t, s), X0)  # velocity models pass through
    assert obj.loss(lambda x_t, t, data: data, X0, torch.Generator().manual_seed(3), data=X0) < 1e-8
    # the clean end: sigma is floored, so an x0 error there costs error / 0.05^2, not infinity
    assert torch.isfinite(obj.velocity(X0 + 1, X0, torch.zeros(2))).all()
    with pytest.raises(ValueError, match="expected 'velocity' or 'x0'"):
        FlowObjective(prediction="epsilon")


def test_input_perturbation_adds_noise_to_what_the_network_reads_and_not_to_the_target():
    seen = {}

    def record(x_t, t):
        seen["x"], seen["t"] = x_t, t
        return torch.zeros_like(x_t)

    plain, perturbed = FlowObjective(prediction="x0"), FlowObjective(prediction="x0", input_perturbation=0.1)
    torch.manual_seed(0)
    x0 = torch.randn(256, 2, 3, 4, 4)
    loss_plain = plain.loss(record, x0, torch.Generator().manual_seed(5))
    x_plain = seen["x"]
    loss_perturbed = perturbed.loss(record, x0, torch.Generator().manual_seed(5))
    s = seen["t"].view(-1, 1, 1, 1, 1)
    extra = seen["x"] - x_plain  # the same levels and path noise: the difference is the extra noise alone
    assert torch.equal(seen["t"], torch.sigmoid(torch.randn(256, generator=torch.Generator().manual_seed(5))))
    assert abs((extra / s).std().item() - 0.1) < 0.005  # gamma * sigma per element
    # the target is the path's own: an all-zero x0 guess costs |x0|^2 / sigma^2 with or without the extra input noise
    assert torch.allclose(loss_plain, loss_perturbed)
    # an x0 model that knows the clean latent is exact either way (the target is x0); a velocity model that answers
    # the velocity through the point it reads is exact only when that point is on the path
    knows = [obj.loss(lambda x_t, t, data: data, x0, torch.Generator().manual_seed(1), data=x0)
             for obj in (plain, perturbed)]
    assert torch.equal(*knows) and knows[0] < 1e-3  # (not 0: sigma is floored at 0.05 in the velocity)

    def through(x_t, t, data):
        return (x_t - data) / t.view(-1, 1, 1, 1, 1)

    assert FlowObjective().loss(through, x0, torch.Generator().manual_seed(1), data=x0) < 1e-8
    loss = FlowObjective(input_perturbation=0.1).loss(through, x0, torch.Generator().manual_seed(1), data=x0)
    assert abs(loss.item() - 0.01) < 0.001  # the extra noise / sigma: gamma^2 per element
    with pytest.raises(ValueError, match="input_perturbation"):
        FlowObjective(input_perturbation=-0.1)


# ---------------------------------------------------------------------------------------------------
# Samplers: an oracle model drives each to the data point; seeds reproduce
# ---------------------------------------------------------------------------------------------------


def _oracle(obj):
    if isinstance(obj, FlowObjective) and obj.prediction == "x0":
        return lambda x, t: X0.expand_as(x)
    if isinstance(obj, FlowObjective):
        return lambda x, t: (x - X0) / t.view(-1, 1, 1, 1, 1).clamp(min=1e-8)
    ac = obj.schedule.alphas_cumprod()

    def fn(x, t):
        a = ac[(t * 1000).round().long()].float().view(-1, 1, 1, 1, 1)
        eps = (x - a.sqrt() * X0) / (1 - a).sqrt()
        return eps if obj.prediction == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * X0
    return fn


@pytest.mark.parametrize("obj, sampler, steps, tol", [
    (FlowObjective(), "euler", 10, 1e-4),
    (FlowObjective(prediction="x0"), "euler", 10, 1e-4),
    (FlowObjective(), "euler-a", 10, 1e-4),
    (FlowObjective(prediction="x0"), "euler-a", 10, 1e-4),
    (FlowObjective(prediction="x0"), "renoise", 10, 1e-4),
    (EpsilonObjective(), "ddim", 20, 1e-3),
    (EpsilonObjective(prediction="v"), "ddim", 20, 1e-3),
    (EpsilonObjective(), "ddpm", 50, 0.05),
])
def test_oracle_model_drives_each_sampler_to_the_data_point(obj, sampler, steps, tol):
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(X0.shape, generator=g)
    out = sample(obj, _oracle(obj), noise, steps, sampler, generator=g)
    assert (out - X0).abs().max() < tol


@pytest.mark.parametrize("obj, sampler", [(FlowObjective(), "euler"), (FlowObjective(), "euler-a"),
                                          (FlowObjective(), "renoise"), (EpsilonObjective(), "ddpm")])
def test_samplers_reproduce_with_a_seed(obj, sampler):
    model = DiT(DiTConfig(in_channels=4, dim=32, depth=1, heads=2, text_dim=8))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    text, mask = torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(X0.shape, generator=g)
        return sample(obj, lambda x, t: model(x, t, text, mask), noise, 5, sampler, generator=g)
    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))


def test_flow_ancestral_without_fresh_noise_is_euler_and_with_it_keeps_the_marginal():
    """eta = 0 is the Euler step exactly; eta = 1 on a point mass keeps x at (1 - s) x0 + s * unit noise at every
    level, the marginal the flow path prescribes."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(X0.shape, generator=g)
    sigmas = flow_sigmas(8, 3.0)
    field = lambda x, t: torch.sin(x) + t.view(-1, 1, 1, 1, 1)  # any velocity field  # noqa: E731
    assert torch.allclose(flow_ancestral_sample(field, x, sigmas, eta=0.0), euler_sample(field, x, sigmas), atol=1e-5)

    x0 = torch.full((4000, 1, 1, 1, 1), 0.5)
    oracle = lambda x, t: (x - x0) / t.view(-1, 1, 1, 1, 1)  # noqa: E731
    seen = []
    flow_ancestral_sample(oracle, torch.randn(x0.shape, generator=g), sigmas, eta=1.0, generator=g,
                          callback=lambda i, x: seen.append(x))
    for s, x in zip(sigmas[1:-1].tolist(), seen, strict=False):
        assert abs(x.mean().item() - (1 - s) * 0.5) < 0.05 and abs(x.std().item() - s) < 0.05


def test_flow_renoise_draws_every_state_afresh_around_the_estimate():
    """eta None (the renoise sampler) keeps none of the current noise: every state sits on the flow path's marginal
    (1 - s) x0 + s z around a point mass, from any starting noise, and one step is x0's estimate plus fresh noise."""
    sigmas = flow_sigmas(8, 3.0)
    x0 = torch.full((4000, 1, 1, 1, 1), 0.5)
    oracle = lambda x, t: (x - x0) / t.view(-1, 1, 1, 1, 1)  # noqa: E731
    seen = []
    g = torch.Generator().manual_seed(0)
    flow_ancestral_sample(oracle, torch.randn(x0.shape, generator=g), sigmas, None, g,
                          callback=lambda i, x: seen.append(x))
    for s, x in zip(sigmas[1:-1].tolist(), seen, strict=False):
        assert abs(x.mean().item() - (1 - s) * 0.5) < 0.05 and abs(x.std().item() - s) < 0.05
    ends = [flow_ancestral_sample(oracle, torch.randn(x0.shape) * scale, sigmas, None, torch.Generator().manual_seed(1))
            for scale in (1.0, 3.0)]
    assert torch.allclose(ends[0], ends[1], atol=1e-5) and torch.allclose(ends[0], x0, atol=1e-5)
    # one step by hand: x0 from the velocity, then all fresh noise at the next level
    x, s1 = torch.randn(2, 1, 1, 1, 1), flow_sigmas(2, 1.0)
    field = lambda x, t: torch.sin(x) + t.view(-1, 1, 1, 1, 1)  # noqa: E731
    first = []
    flow_ancestral_sample(field, x, s1, None, torch.Generator().manual_seed(2), callback=lambda i, z: first.append(z))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    est = x - 1.0 * field(x, torch.ones(2))
    assert torch.allclose(first[0], 0.5 * est + 0.5 * z, atol=1e-6)


def test_sdedit_start_zero_noise_returns_input():
    obj = FlowObjective()
    x = noise_to(obj, X0, torch.randn_like(X0), steps=10, start=10)  # the last level is 0: no noise
    assert torch.equal(x, X0)
    assert torch.equal(sample(obj, _oracle(obj), x, 10, start=10), X0)


def test_sampler_errors_teach():
    with pytest.raises(ValueError, match="does not fit a flow model"):
        sample(FlowObjective(), _oracle(FlowObjective()), X0, 4, "ddim")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        sample(FlowObjective(), _oracle(FlowObjective()), X0, 0)


# ---------------------------------------------------------------------------------------------------
# Classifier-free guidance: one batched call equals two separate passes
# ---------------------------------------------------------------------------------------------------


def test_cfg_batch_equals_separate_passes():
    torch.manual_seed(0)
    model = DiT(DiTConfig(in_channels=4, dim=32, depth=2, heads=2, text_dim=8)).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    text, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)
    null_text, null_mask = torch.zeros(2, 2, 8), torch.zeros(2, 2, dtype=torch.bool)  # other length on purpose
    t = torch.rand(2)
    fn = classifier_free_guidance(model, {"text": text, "text_mask": mask},
                                  {"text": null_text, "text_mask": null_mask}, scale=4.0)
    cond, uncond = model(X0, t, text, mask), model(X0, t, null_text, null_mask)
    assert torch.allclose(fn(X0, t), uncond + 4.0 * (cond - uncond), atol=1e-5)

    # guidance in an interval: per sample, guided inside [lo, hi], the conditional output outside
    t = torch.tensor([0.1, 0.5])
    fn = classifier_free_guidance(model, {"text": text, "text_mask": mask},
                                  {"text": null_text, "text_mask": null_mask}, scale=4.0, interval=(0.2, 0.8))
    cond, uncond = model(X0, t, text, mask), model(X0, t, null_text, null_mask)
    out = fn(X0, t)
    assert torch.allclose(out[0], cond[0], atol=1e-5)
    assert torch.allclose(out[1], (uncond + 4.0 * (cond - uncond))[1], atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Parity with diffusers' schedulers on the same model outputs
# ---------------------------------------------------------------------------------------------------


def _fake_model(x, t):
    """A fixed, non-trivial function standing in for a network."""
    return torch.sin(3 * x) * 0.5 + t.view(-1, 1, 1, 1, 1) * 0.1


def test_ddim_matches_diffusers_ddimscheduler():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                                    clip_sample=False, set_alpha_to_one=True, steps_offset=0,
                                    timestep_spacing="leading")
    sched.set_timesteps(25)
    assert sched.timesteps.tolist() == ddim_timesteps(1000, 25)
    # the same noise schedule (diffusers keeps it in float32), then ours in float64 on both sides, so the comparison
    # is of the update rule and not of float32 rounding amplified over 25 steps (diffusers 0.42 drifts by 6e-6)
    ours_alphas = DDPMSchedule(kind="linear", beta_start=1e-4, beta_end=0.02).alphas_cumprod()
    assert torch.allclose(sched.alphas_cumprod.double(), ours_alphas, rtol=1e-6, atol=0)
    sched.alphas_cumprod = ours_alphas
    x = torch.randn(X0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = x.clone()
    for t in sched.timesteps:
        ref = sched.step(_fake_model(ref, torch.full((2,), t.item() / 1000, dtype=torch.float64)), t, ref).prev_sample
    ours = ddim_sample(_fake_model, x, EpsilonObjective(), ddim_timesteps(1000, 25))
    assert torch.allclose(ours, ref, atol=1e-6, rtol=1e-6)


def test_flow_euler_matches_diffusers_flowmatcheuler():
    diffusers = pytest.importorskip("diffusers")
    for shift in (1.0, 3.0):
        sched = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
        sched.set_timesteps(12)
        x = torch.randn(X0.shape, generator=torch.Generator().manual_seed(2))
        ref = x.clone()
        for t in sched.timesteps:
            sigma = sched.sigmas[sched.index_for_timestep(t)]
            ref = sched.step(_fake_model(ref, sigma.expand(2)), t, ref).prev_sample
        ours = euler_sample(_fake_model, x, sched.sigmas.double())
        assert torch.allclose(ours, ref, atol=1e-5)


def test_flow_sigmas_end_at_zero_and_shift_towards_noise():
    s = flow_sigmas(8)
    assert s[0] == 1 and s[-1] == 0 and (s.diff() < 0).all()
    assert (flow_sigmas(8, shift=3.0)[1:-1] > s[1:-1]).all()


# ---------------------------------------------------------------------------------------------------
# Frame conditioning: given latent frames enter clean and are left out of the loss
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("obj", [FlowObjective(), EpsilonObjective()], ids=["flow", "epsilon"])
def test_frame_conditioning_loss_ignores_the_given_frames(obj):
    g = torch.Generator().manual_seed(5)
    cond_mask = torch.zeros(X0.shape[0], 1, *X0.shape[2:])
    cond_mask[:, :, 0] = 1  # the first latent frame is given
    seen = {}

    def wrong_only_where_given(x_t, t, cond, cond_mask, data):
        seen["x_t"] = x_t
        if isinstance(obj, FlowObjective):
            right = (x_t - data) / t.view(-1, 1, 1, 1, 1)
        else:
            a = obj.schedule.alphas_cumprod().float()[(t * 1000).round().long()].view(-1, 1, 1, 1, 1)
            right = (x_t - a.sqrt() * data) / (1 - a).sqrt()
        return torch.where(cond_mask.bool(), torch.full_like(right, 1e3), right)

    loss = obj.loss(wrong_only_where_given, X0, g, cond=X0, cond_mask=cond_mask, data=X0)
    assert loss < 1e-6  # the given frame's huge error does not count
    assert torch.equal(seen["x_t"][:, :, 0], X0[:, :, 0])  # and it entered the model clean, not noised
    assert not torch.allclose(seen["x_t"][:, :, 1:], X0[:, :, 1:])  # the rest is noised
    free = obj.loss(lambda x_t, t, cond, cond_mask: torch.zeros_like(x_t), X0, g, cond=X0, cond_mask=cond_mask)
    assert free > 0.1  # and the free frames do count


def test_keep_given_replaces_only_the_masked_frames():
    x, cond = torch.randn(2, 3, 4, 2, 2), torch.randn(2, 3, 4, 2, 2)
    mask = torch.zeros(2, 1, 4, 2, 2)
    mask[:, :, -1] = 1
    out = keep_given(x, cond, mask)
    assert torch.equal(out[:, :, -1], cond[:, :, -1]) and torch.equal(out[:, :, :-1], x[:, :, :-1])
    assert keep_given(x, None, None) is x


# ---------------------------------------------------------------------------------------------------
# Loss weights: object positions counted more
# ---------------------------------------------------------------------------------------------------


def test_latent_foreground_weight_marks_the_positions_far_from_the_background():
    x0 = torch.full((2, 4, 3, 8, 8), 0.3)  # a flat background latent
    x0[0, :, 1, 2:4, 5:7] = 2.0  # an object: 4 positions of one frame
    x0[1, 0, :, 0, 0] += 0.2  # a faint ripple, below the threshold
    w = latent_foreground_weight(x0, 9.0)
    assert w.shape == (2, 1, 3, 8, 8)
    assert torch.equal(w[0, 0, 1, 2:4, 5:7], torch.full((2, 2), 10.0))
    assert w[0].sum() == 3 * 64 + 4 * 9 and torch.equal(w[1], torch.ones_like(w[1]))


def test_masked_mse_with_weights_is_the_weighted_mean_over_free_elements():
    pred, target = torch.randn(2, 3, 4, 2, 2), torch.randn(2, 3, 4, 2, 2)
    err = (pred - target).pow(2)
    ones = torch.ones(2, 1, 4, 2, 2)
    assert torch.isclose(masked_mse(pred, target, None, ones), err.mean())
    weight = ones.clone()
    weight[:, :, 1] = 10.0
    expected = (err * weight).sum() / (weight.expand_as(err)).sum()
    assert torch.isclose(masked_mse(pred, target, None, weight), expected)
    given = torch.zeros(2, 1, 4, 2, 2)
    given[:, :, 0] = 1  # a given frame stays out of the weighted mean
    free = weight * (1 - given)
    expected = (err * free).sum() / free.expand_as(err).sum()
    assert torch.isclose(masked_mse(pred, target, given, weight), expected)


def test_a_loss_weight_counts_errors_at_the_weighted_positions_more():
    g = torch.Generator().manual_seed(3)
    obj = FlowObjective(prediction="x0")
    weight = torch.ones(X0.shape[0], 1, *X0.shape[2:])
    weight[:, :, :, :2, :2] = 10.0  # the "object" corner

    def wrong_at(region):
        def model(x_t, t):
            out = X0.clone()  # x0 prediction: the truth, except in `region`
            out[region] += 1.0
            return out
        return model

    corner = (slice(None), slice(None), slice(None), slice(0, 2), slice(0, 2))
    other = (slice(None), slice(None), slice(None), slice(2, 4), slice(2, 4))
    plain = [obj.loss(wrong_at(r), X0, torch.Generator().manual_seed(3)) for r in (corner, other)]
    weighted = [obj.loss(wrong_at(r), X0, torch.Generator().manual_seed(3), weight) for r in (corner, other)]
    assert torch.isclose(plain[0], plain[1], rtol=1e-4)  # the same error, the same plain loss
    assert weighted[0] > 5 * weighted[1]  # weighted: an error at the object costs more
    assert obj.loss(lambda x_t, t: X0, X0, g, weight) < 1e-8


def test_weighting_what_the_model_drew_makes_a_copy_cost_what_a_missing_object_does():
    """With the clip's objects weighted alone, missing an object costs 10x drawing one where there is none (the
    copies a model unsure of the count learns to draw); weighting the model's drawn objects too evens them."""
    x0 = torch.full((1, 4, 3, 8, 8), 0.3)  # a flat background
    x0[..., 1:3, 1:3] = 2.0  # one object
    missing, copy = x0.clone(), x0.clone()
    missing[..., 1:3, 1:3] = 0.3  # the object left out
    copy[..., 5:7, 5:7] = 2.0  # a second one drawn
    either = latent_foreground_weight(x0, 9.0, estimate=copy)
    assert torch.equal(either[..., 5:7, 5:7], torch.full((1, 1, 3, 2, 2), 10.0))  # the drawn copy's positions
    assert torch.equal(either, torch.maximum(latent_foreground_weight(x0, 9.0),
                                             latent_foreground_weight(copy, 9.0)))  # (both clips' median: 0.3)
    obj = FlowObjective(prediction="x0")

    def loss(drawn, weight):
        return obj.loss(lambda x_t, t: drawn, x0, torch.Generator().manual_seed(0), weight)

    clip_only = latent_foreground_weight(x0, 9.0)
    assert loss(missing, clip_only) > 5 * loss(copy, clip_only)  # the asymmetry

    def drawn_too(estimate):
        return latent_foreground_weight(x0, 9.0, estimate=estimate)

    # the same error at the same weight (10); the weighted mean's denominators differ by the copy's positions only
    total = {name: drawn_too(d).expand_as(x0).sum() for name, d in (("missing", missing), ("copy", copy))}
    assert torch.isclose(loss(missing, drawn_too) * total["missing"], loss(copy, drawn_too) * total["copy"])


@pytest.mark.parametrize("objective", [FlowObjective(), FlowObjective(prediction="x0"), EpsilonObjective(),
                                       EpsilonObjective(prediction="v")], ids=["velocity", "x0", "epsilon", "v"])
def test_the_clean_estimate_of_the_exact_output_is_the_clean_latent(objective):
    noise = torch.randn(X0.shape, generator=torch.Generator().manual_seed(1))
    if isinstance(objective, FlowObjective):
        t = torch.tensor([0.3, 0.9])
        x_t = objective.add_noise(X0, noise, t)
        out = X0 if objective.prediction == "x0" else objective.target(X0, noise)
    else:
        t = torch.tensor([100, 700])
        x_t, out = objective.add_noise(X0, noise, t), objective.target(X0, noise, t)
    assert torch.allclose(objective.clean_estimate(out, x_t, t), X0, atol=1e-4)


def test_a_weight_function_is_given_the_models_clean_estimate_detached():
    seen = []

    def weight(estimate):
        seen.append(estimate)
        return torch.ones(X0.shape[0], 1, *X0.shape[2:])

    out = (X0 + 0.5).requires_grad_()
    loss = FlowObjective(prediction="x0").loss(lambda x_t, t: out, X0, torch.Generator().manual_seed(0), weight)
    assert len(seen) == 1 and torch.equal(seen[0], out.detach()) and not seen[0].requires_grad
    assert loss.requires_grad  # the loss itself still trains the model
