"""Inference strategies: pure functions with one signature, ``strategy(bundle, x, schedule, *, params, callback)``.

``x`` is a batch of normalised hazy images (B, 1, H, W) seen at step ``schedule[0]``; ``schedule`` is the
decreasing list of steps the strategy walks through, ending at 0; ``callback(t, x0_estimate)`` receives
the estimate of x_0 available at step t (and the final one at t = 0). Each returns its final estimate of
x_0. No hidden state: the same inputs (and RNG state, for sampling strategies) give the same output.

:data:`STRATEGIES` maps each name to a :class:`StrategySpec`: the function, the trained models it needs,
whose normalisation its inputs use, and which schedule it walks. ``params`` (:class:`StrategyParams`) are
the settings a strategy takes besides its networks (``dehaze predict`` binds them from its config).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Protocol, Sequence, TypeVar

import torch
from torch import nn

from training.config import TRAINER_KINDS

if TYPE_CHECKING:
    from dehaze.models.flow import FlowNet
    from dehaze.models.hvae import HVAE
    from dehaze.models.latent import LatentCycleGAN, LatentNet

Callback = Callable[[float, torch.Tensor], None]


class ModelBundle:
    """The trained networks strategies may use, one per trainer kind: ``bundle.unet``, ``bundle.hvae``, ...
    (every kind of :data:`training.config.TRAINER_KINDS`), ``None`` where no run of that kind was given.
    The latent restorer is ``bundle.latent`` R(z_t, t); ``bundle.degradation`` the LatentCycleGAN whose
    G(t) degrades and whose ``restorer`` the latent loops use."""

    if TYPE_CHECKING:  # what __getattr__ gives per kind: the networks the kinds build (training.config.ModelKind.build);
        # the UNet and the pixel restorer are only called, so any Module serves (the tests give analytic restorers)
        unet: nn.Module | None
        pixel: nn.Module | None
        flow: FlowNet | None
        hdn: HVAE | None
        hvae: HVAE | None
        latent: LatentNet | None
        degradation: LatentCycleGAN | None

    def __init__(self, **models: nn.Module | None) -> None:
        unknown = sorted(set(models) - set(TRAINER_KINDS))
        if unknown:
            raise TypeError(f"ModelBundle: no trainer kind {unknown[0]!r} (kinds: {', '.join(TRAINER_KINDS)})")
        self.models: dict[str, nn.Module] = {k: m for k, m in models.items() if m is not None}

    def __getattr__(self, name: str) -> Any:
        if name in TRAINER_KINDS:
            return self.__dict__["models"].get(name)
        raise AttributeError(name)

    def add(self, kind: str, model: nn.Module) -> None:
        if kind not in TRAINER_KINDS:
            raise TypeError(f"ModelBundle: no trainer kind {kind!r}")
        self.models[kind] = model


@dataclass(frozen=True)
class StrategyParams:
    """What a strategy is told besides its networks, input and schedule."""

    alpha: float = 0.5  # running-combination weight alpha_t of the latent-combine variants
    flow_steps: int = 20  # ODE steps of the flow sampler, noise (tau = 0) to the clean image (tau = 1)
    flow_solver: Literal["euler", "heun"] = "euler"  # heun: 2 network evaluations per step but the last
    indi_stop: float = 1.0  # pixel-indi-early: the walk's t at which R's estimate is returned (1: the first ladder step)


DEFAULT_PARAMS = StrategyParams()


Posterior = Callable[["ModelBundle", torch.Tensor, int], torch.Tensor]  # (bundle, x0 (B,1,H,W), K) -> (K, B, 1, H, W)


class Strategy(Protocol):
    """The signature every strategy has (see the module docstring)."""

    def __call__(self, bundle: ModelBundle, x: torch.Tensor, schedule: Sequence[float], *,
                 params: StrategyParams = DEFAULT_PARAMS, callback: Callback | None = None) -> torch.Tensor: ...


_Network = TypeVar("_Network", bound=nn.Module)


def need(model: _Network | None, name: str) -> _Network:
    """``model``, or a ValueError naming the kind of run the strategy needs."""
    if model is None:
        raise ValueError(f"this strategy needs a trained {name} model")
    return model


def one_shot_unet(bundle: ModelBundle, x: torch.Tensor, schedule: Sequence[float], *, params: StrategyParams = DEFAULT_PARAMS,
                  callback: Callback | None = None) -> torch.Tensor:
    """x_0 = UNet(x_t): the CARE-like baseline, whatever the step."""
    x0 = need(bundle.unet, "unet")(x)
    if callback:
        callback(0.0, x0)
    return x0


def pixel_indi(bundle: ModelBundle, x: torch.Tensor, schedule: Sequence[float], *, params: StrategyParams = DEFAULT_PARAMS,
               callback: Callback | None = None) -> torch.Tensor:
    """InDI sampling in pixel space: x_{t-d} = (d/t) R(x_t, t, s) + (1 - d/t) x_t for t along ``schedule``,
    from the source step s = ``schedule[0]`` (the step of the input).

    t convention: x_t is the state on the straight path x_0 + (t/s)(x_s - x_0) the restorer was trained on
    (t = s: the input, t = 0: the clean image); a restorer trained on the ladder path takes t alone.
    With a one-step schedule [s, 0] this is R(x_s, s, s): the one-shot estimate.
    """
    restorer = need(bundle.pixel, "pixel")
    source = torch.full((x.shape[0],), float(schedule[0]), device=x.device)
    conditions = (source,) if getattr(restorer, "source_conditioned", False) else ()
    # a restorer reading the source image sees the input x_s at every step of the walk
    image = {"x_source": x} if getattr(restorer, "source_image", False) else {}
    for t, t_next in zip(schedule, schedule[1:]):
        d = t - t_next
        r = restorer(x, torch.full((x.shape[0],), float(t), device=x.device), *conditions, **image)
        if callback:
            callback(float(t), r)
        x = (d / t) * r + (1 - d / t) * x
    if callback:
        callback(0.0, x)
    return x


def pixel_indi_early(bundle: ModelBundle, x: torch.Tensor, schedule: Sequence[float], *, params: StrategyParams = DEFAULT_PARAMS,
                     callback: Callback | None = None) -> torch.Tensor:
    """The InDI walk of :func:`pixel_indi` stopped at the first t <= ``params.indi_stop`` of ``schedule``,
    returning R's estimate R(x_t, t, s) there instead of walking on to t = 0; from a source step
    s <= indi_stop that is the one-shot estimate R(x_s, s, s), and indi_stop = 0 is the whole walk.

    Why: below the first ladder step the restorer has only seen states a fraction t/s < 1/s of the way from
    x_0 to x_s, where its training asks it to pass x_t nearly through; late in a walk it then passes through
    the walk's own errors. Measured on the CPU study's pixel run (delta 0.25) on a validation ladder of its
    own seed (not the test ladder): R's estimate at t = 1 scores 0.0-2.0 dB above the walk's end from every
    source step 2-7 and within -0.4 ... +0.3 dB of the one-shot (README, "The restorers")."""
    cut = next((i for i, t in enumerate(schedule) if 0 < t <= params.indi_stop), len(schedule))
    # the walk's last step from t to 0 is exactly R(x_t, t, s): the same walk, cut there
    return pixel_indi(bundle, x, [*schedule[: cut + 1], 0.0] if cut < len(schedule) else schedule, params=params, callback=callback)


def indi_schedule(t_start: float, delta: float) -> list[float]:
    """[t_start, t_start - delta, ..., 0] (the last gap may be shorter); [0] if t_start is 0."""
    ts, t = [float(t_start)], float(t_start)
    while t > 1e-9:
        t = max(0.0, t - delta)
        ts.append(t)
    return ts


# ---- HDN: posterior sampling ------------------------------------------------------------------------
def hdn_posterior(model: HVAE, x: torch.Tensor, k: int, *, generator: torch.Generator | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mmse, std, samples) of a ladder VAE's posterior for ``x`` (B, 1, H, W): ``samples`` (k, B, 1, H, W)
    are decoded means of z ~ q(z | x); ``mmse`` their mean and ``std`` their per-pixel standard deviation
    (population std over the k samples; zeros when k = 1), both (B, 1, H, W). Pass a seeded ``generator`` for reproducible draws."""
    samples = model.sample_posterior(x, k, generator=generator).float()
    std = samples.std(dim=0, unbiased=False)  # population std, as the engine reports for K samples
    return samples.mean(dim=0), std, samples


def one_shot_hdn(bundle: ModelBundle, x: torch.Tensor, schedule: Sequence[float], *, params: StrategyParams = DEFAULT_PARAMS,
                 callback: Callback | None = None) -> torch.Tensor:
    """One HDN posterior sample of x_0 given x_t (decoded z ~ q(z | x_t)), whatever the step. Run it on K
    copies of the input (the engine's ``samples``) for the MMSE and the per-pixel std."""
    x0 = need(bundle.hdn, "hdn").sample_posterior(x, 1)[0]
    if callback:
        callback(0.0, x0)
    return x0


# ---- conditional flow matching: posterior samples from noise ------------------------------------------
def flow(bundle: ModelBundle, x: torch.Tensor, schedule: Sequence[float], *, params: StrategyParams = DEFAULT_PARAMS,
         callback: Callback | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """One posterior sample of x_0 per row of ``x`` (B, 1, H, W), the input at step t = ``schedule[0]``: the
    flow restorer's ODE from Gaussian ``noise`` (B, 1, H, W; the engine passes noise keyed by pixel position,
    so tiles agree with the whole image; default: drawn from torch's RNG) to the clean end, in
    ``params.flow_steps`` steps of ``params.flow_solver`` (:func:`dehaze.models.flow.sample`). Run it on K
    copies of the input (the engine's ``samples``) for the posterior mean and std."""
    from dehaze.models.flow import sample

    net = need(bundle.flow, "flow")
    t = torch.full((x.shape[0],), float(schedule[0]), device=x.device)
    if noise is None:
        noise = torch.randn_like(x)
    x0 = sample(net, x, t, noise.to(x.device), params.flow_steps, params.flow_solver)
    if callback:
        callback(0.0, x0)
    return x0


# ---- latent strategies ----------------------------------------------------------------------------
"""Iterative latent strategies of the study, on the strategy signature ``(bundle, x, schedule, *, callback)``.

From z = E(x_t) (HVAE encoder), for consecutive steps t > s of ``schedule`` (ending at 0):

    z_hat_0 = R(z_t, t)                                    restore
    z_s     = degrade(z_hat_0, s)                          learned degradation back to step s
    where degrade(z, s) = G(s+1)(z) for s >= 1 (G(t) maps z_hat_0|t to z_{t-1}), and degrade(z, 0) = z

and finally x_0 = decode(z_0). The callback receives the decoded x_0 estimate decode(z_hat_0|t) at each
step t, and the final estimate at step 0. Variants (``params.alpha`` is the combination weight alpha_t):

* combine D:   z_s = alpha * degrade(z_hat_0, s) + (1 - alpha) * z_t               (s >= 1)
* combine R:   z_hat_0 = alpha * R(z_t, t) + (1 - alpha) * z_hat_0 of the previous step
* refine D/R:  re-encode through the HVAE, z <- E(decode(z)), after degrading / after restoring
* cold:        Cold Diffusion (Bansal et al. 2022, Alg. 2): z_s = z_t - degrade(z_hat_0, t) + degrade(z_hat_0, s);
               at t = T there is no G(T+1) to degrade to T, so that first step is the direct one.

* identity:    degrade(z_hat_0, s) = z_hat_0 (no degradation: what the loop does without D)
* oracle:      degrade(z_hat_0, s) = E(x_s), the posterior mean of the ladder's own step s (needs the
               whole ladder, ``ladder=``); the loop's estimate at each step t is then the one-shot latent
               estimate decode(R(E(x_t), t)). Beside the learned D, identity and oracle tell whether drift
               comes from R or from D.

Limits: alpha = 1 makes every combination the direct loop; a one-step schedule [t, 0] is the one-shot
latent restorer decode(R(E(x_t), t)) for direct, combination and cold variants.

The restorer is the degradation run's (``gan.restorer``): the base latent run's weights, or those the
degradation run fine-tuned on its loop's states. Every walk runs on posterior means, the kind of latent R
was trained on. Posterior samples (the spec's ``posterior``, :func:`latent_posterior`, drawn by the engine
after one walk) come from where they are valid: the HVAE's posterior of the final estimate, z ~ q(z | x_hat_0),
decoded (sampling z_T ~ q(z | x_T) fed R latents it never saw: the one-shot latent estimate at x_T lost 7 dB
in the science review).
"""

Latents = list[torch.Tensor]


def _mix(a: Latents, b: Latents, alpha: float) -> Latents:
    return [alpha * x + (1 - alpha) * y for x, y in zip(a, b)]


def latent_loop(bundle: ModelBundle, x: torch.Tensor, schedule: Sequence[float], *, params: StrategyParams = DEFAULT_PARAMS,
                callback: Callback | None = None,
                combine_d: bool = False, combine_r: bool = False, refine_d: bool = False, refine_r: bool = False,
                cold: bool = False, identity: bool = False, oracle: bool = False, ladder: torch.Tensor | None = None,
                ) -> torch.Tensor:
    """The iterative latent procedure with its variants (see the module docstring). ``oracle`` replaces the
    learned degradation by E(x_s) of ``ladder`` (B, T+1, H, W), the normalised input at every step."""
    if oracle and ladder is None:
        raise ValueError("the oracle loop needs the input at every step (ladder=)")
    hvae, gan = need(bundle.hvae, "hvae"), need(bundle.degradation, "degradation")
    need(bundle.latent, "latent")
    restorer = gan.restorer
    n_steps = gan.G.n_steps

    def degrade(z0: Latents, s: int) -> Latents:
        if s == 0 or identity:
            return z0
        if oracle:
            assert ladder is not None  # checked on entry: the oracle loop raises without one
            return hvae.encode(ladder[:, s : s + 1].to(x.dtype), sample=False)
        return gan.G(z0, s + 1)

    def reencode(z: Latents) -> Latents:
        return hvae.encode(hvae.decode(z), sample=False)

    z = hvae.encode(x, sample=False)
    z0_prev: Latents | None = None
    decoded: torch.Tensor | None = None  # decode(z0_prev), when the callback asked for it
    for t, s in zip(schedule, schedule[1:]):
        t, s = int(t), int(s)
        z0 = restorer(z, torch.full((x.shape[0],), float(t), device=x.device))
        if refine_r:
            z0 = reencode(z0)
        if combine_r and z0_prev is not None:
            z0 = _mix(z0, z0_prev, params.alpha)
        if callback:
            decoded = hvae.decode(z0)
            callback(float(t), decoded)
        if cold and s >= 1 and t + 1 <= n_steps:
            z_next = [zt - a + b for zt, a, b in zip(z, degrade(z0, t), degrade(z0, s))]
        else:
            z_next = degrade(z0, s)
        if s >= 1 and refine_d:
            z_next = reencode(z_next)
        if s >= 1 and combine_d:
            z_next = _mix(z_next, z, params.alpha)
        z, z0_prev = z_next, z0
    # the last step (to 0) leaves z = z_hat_0 itself: reuse its decode when the callback already made it
    x0 = decoded if (decoded is not None and z is z0_prev) else hvae.decode(z)
    if callback:
        callback(0.0, x0)
    return x0


def _variant(**flags: bool):  # noqa: ANN202 - returns a Strategy
    def strategy(bundle: ModelBundle, x: torch.Tensor, schedule: Sequence[float], *, params: StrategyParams = DEFAULT_PARAMS,
                 callback: Callback | None = None, ladder: torch.Tensor | None = None) -> torch.Tensor:
        return latent_loop(bundle, x, schedule, params=params, callback=callback, ladder=ladder, **flags)

    strategy.__doc__ = f"latent_loop with {flags or 'no variant (direct)'}"
    return strategy


Schedule = Literal["one-step", "indi", "ladder"]  # [t, 0]; (t, t - delta, ..., 0); (t, t - 1, ..., 0)


@dataclass(frozen=True)
class StrategySpec:
    """A strategy and what running it takes: the kinds it needs, whose normalisation, which schedule."""

    fn: Strategy
    needs: tuple[str, ...]  # the trainer kinds (ModelBundle members) it uses
    primary: str  # the run whose normalisation its inputs use
    schedule: Schedule
    one_shot: bool = False
    samples: bool = False  # its output is random: K samples give a posterior mean and std
    needs_ladder: bool = False  # called with ladder= (B, T+1, H, W): the input at every step (the oracle)
    needs_noise: bool = False  # called with noise= (B, 1, H, W): Gaussian noise keyed by pixel position (flow)
    # a deterministic strategy's samples: K posterior samples around its estimate, drawn after one walk per
    # input (the estimate stays the prediction; the samples give the std); None: K walks, averaged
    posterior: Posterior | None = None


def latent_posterior(bundle: ModelBundle, x0: torch.Tensor, k: int) -> torch.Tensor:
    """K samples (K, B, 1, H, W) of the HVAE posterior around a latent walk's estimate ``x0`` (B, 1, H, W):
    decoded z ~ q(z | x0), where posterior samples are valid (the walk itself runs on posterior means).

    Why their mean is not the prediction: R is an MSE regressor in latent space, so decode(R(...)) is
    already the estimate, and averaging HVAE reconstructions of it only adds their scatter. Measured on
    the CPU study (benchmarks/results/study_cpu.json, latent-one-shot:samples): the mean of K = 4 such
    samples scored 2.0 dB below the estimate at x_T (3.3-4.6 dB at the other steps)."""
    return need(bundle.hvae, "hvae").sample_posterior(x0, k)


LATENT = ("hvae", "latent", "degradation")
STRATEGIES: dict[str, StrategySpec] = {
    "one-shot-unet": StrategySpec(one_shot_unet, ("unet",), "unet", "one-step", one_shot=True),
    "one-shot-hdn": StrategySpec(one_shot_hdn, ("hdn",), "hdn", "one-step", one_shot=True, samples=True),
    "pixel-indi": StrategySpec(pixel_indi, ("pixel",), "pixel", "indi"),
    # the walk stopped at t = indi_stop, returning R's estimate there (see pixel_indi_early)
    "pixel-indi-early": StrategySpec(pixel_indi_early, ("pixel",), "pixel", "indi"),
    # the same restorer in one step of size s: the reference its walk must not fall below
    "pixel-one-shot": StrategySpec(pixel_indi, ("pixel",), "pixel", "one-step", one_shot=True),
    "flow": StrategySpec(flow, ("flow",), "flow", "one-step", one_shot=True, samples=True, needs_noise=True),
}
_LATENT_VARIANTS = {
    "latent-direct": _variant(),
    "latent-combine-d": _variant(combine_d=True),
    "latent-combine-r": _variant(combine_r=True),
    "latent-combine-dr": _variant(combine_d=True, combine_r=True),
    "latent-refine-d": _variant(refine_d=True),
    "latent-refine-r": _variant(refine_r=True),
    "latent-refine-dr": _variant(refine_d=True, refine_r=True),
    "latent-cold": _variant(cold=True),
    "latent-identity": _variant(identity=True),
    "latent-oracle": _variant(oracle=True),
}
STRATEGIES.update({name: StrategySpec(fn, LATENT, "hvae", "ladder", needs_ladder=name == "latent-oracle", posterior=latent_posterior)
                   for name, fn in _LATENT_VARIANTS.items()})
# decode(R(E(x_t), t)) in one step, from every input step: the latent restorer's own one-shot reference
STRATEGIES["latent-one-shot"] = StrategySpec(_LATENT_VARIANTS["latent-direct"], LATENT, "hvae", "one-step", one_shot=True,
                                             posterior=latent_posterior)


def schedule_for(spec: StrategySpec, t_start: int, delta: float = 1.0) -> list[float]:
    """The steps a strategy walks from input step ``t_start`` down to 0."""
    if spec.schedule == "one-step":
        return [float(t_start), 0.0] if t_start > 0 else [0.0]
    if spec.schedule == "indi":
        return indi_schedule(t_start, delta)
    return [float(t) for t in range(int(t_start), -1, -1)]
