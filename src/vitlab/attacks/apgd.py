"""Auto-PGD (Croce & Hein, 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", Algorithm 1): APGD-CE, APGD-DLR and the targeted APGD-T, L∞ and L2.

The step-size schedule is the paper's: η⁽⁰⁾ = 2ε, momentum 0.75 (none on the first step), checkpoints after
0.22·N_iter iterations and then at gaps shrinking by 0.03·N_iter down to 0.06·N_iter; at a checkpoint η halves (and
the iterate restarts from the best point) when fewer than ρ·k of the last k steps increased the loss, or when the
previous checkpoint did not halve and the best loss did not improve since. The random start and the order of every
random draw follow the reference implementation, so the same seed gives the same starting points.

Batched over the whole batch with no per-sample loop. One deliberate difference: a point is dropped from the batch
as soon as it is misclassified (``early_stop=True``). Every quantity of the algorithm is per sample, so this changes
neither the other points' trajectories nor the robust accuracy; it only stops spending forward/backward passes on
points that are already broken (the reference keeps attacking them to the last iteration).

On the CPU, convolutional models are attacked in the channels-last (NHWC) layout (``channels_last=True``): oneDNN's
NHWC convolutions take about 0.75x the time of NCHW ones for the same values up to float rounding (see
docs/benchmarks.md). The model's tensors are returned to their own layout afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.attacks.pgd import dlr_loss
from vitlab.attacks.threat import check_norm, check_unit_range, make_generator, model_mode

APGD_LOSSES = ("ce", "dlr")
TargetedLoss = Callable[[Tensor, Tensor, Tensor | None], Tensor]


def targeted_dlr_loss(logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """Targeted DLR (Croce & Hein, 2020, eq. 6): −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12). -> (B,)."""
    ranked, _ = logits.sort(dim=1)
    true = logits.gather(1, labels[:, None]).squeeze(1)
    target = logits.gather(1, targets[:, None]).squeeze(1)
    return -(true - target) / (ranked[:, -1] - 0.5 * (ranked[:, -3] + ranked[:, -4]) + 1e-12)


def _per_sample_loss(name: str) -> TargetedLoss:
    if name == "ce":
        return lambda z, y, t: F.cross_entropy(z, y, reduction="none")
    if name == "dlr":
        return lambda z, y, t: dlr_loss(z, y)
    if name == "dlr-targeted":
        def targeted(z: Tensor, y: Tensor, t: Tensor | None) -> Tensor:
            assert t is not None
            return targeted_dlr_loss(z, y, t)
        return targeted
    raise ValueError(f"apgd: unknown loss {name!r} (allowed: {', '.join(APGD_LOSSES)})")


def _unit_direction(v: Tensor, norm: str) -> Tensor:
    """v / ‖v‖ per sample (the reference adds 1e-12 to the norm)."""
    flat = v.reshape(v.shape[0], -1)
    n = flat.abs().amax(dim=1) if norm == "Linf" else flat.norm(p=2, dim=1)
    return v / (n.view(-1, *([1] * (v.dim() - 1))) + 1e-12)


def _l2_ball(x: Tensor, z: Tensor, eps: float) -> Tensor:
    """x + (z − x)·min(ε, ‖z − x‖)/‖z − x‖, clamped to [0, 1] (the reference L2 projection)."""
    delta = z - x
    norms = delta.reshape(delta.shape[0], -1).norm(p=2, dim=1).view(-1, *([1] * (x.dim() - 1)))
    return (x + _unit_direction(delta, "L2") * torch.clamp(norms, max=eps)).clamp(0.0, 1.0)


def _linf_ball(x: Tensor, z: Tensor, eps: float) -> Tensor:
    return torch.min(torch.max(z, x - eps), x + eps).clamp(0.0, 1.0)


@contextmanager
def _attack_layout(model: nn.Module, x: Tensor, enabled: bool) -> Iterator[Tensor]:
    """Yield x in the layout the attack runs in: channels-last for a CPU model with Conv2d layers whose 4-D tensors are
    all in the default layout (restored on exit); otherwise x unchanged."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.dim() == 4]
    use = (enabled and x.dim() == 4 and x.device.type == "cpu" and bool(tensors)
           and all(t.device.type == "cpu" and t.is_contiguous() for t in tensors)
           and any(isinstance(m, nn.Conv2d) for m in model.modules()))
    if not use:
        yield x
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield x.contiguous(memory_format=torch.channels_last)
    finally:
        model.to(memory_format=torch.contiguous_format)


def _loss_and_grad(model: nn.Module, x: Tensor, y: Tensor, targets: Tensor | None,
                   loss_fn: TargetedLoss) -> tuple[Tensor, Tensor, Tensor]:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        loss = loss_fn(logits, y, targets)
        (grad,) = torch.autograd.grad(loss.sum(), [x])
    return logits.detach(), loss.detach(), grad.detach()


def apgd_single_run(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str, loss: str,
                    steps: int = 100, rho: float = 0.75, targets: Tensor | None = None,
                    generator: torch.Generator | None = None, early_stop: bool = True) -> tuple[Tensor, Tensor]:
    """One APGD run from a random start (Algorithm 1). x: (B, ...) in [0, 1], y: (B,), targets: (B,) for APGD-T.

    Returns (x_adv, robust): x_adv holds a misclassified iterate where one was found (else the random start), and
    robust (B,) bool is False for the points the run broke.
    """
    loss_fn = _per_sample_loss(loss)
    n = x.shape[0]
    checkpoint_first = max(int(0.22 * steps), 1)
    checkpoint_min = max(int(0.06 * steps), 1)
    checkpoint_decrease = max(int(0.03 * steps), 1)

    # random start: uniform in the L∞ ball scaled to its surface, or a Gaussian direction on the L2 sphere
    if norm == "Linf":
        noise = 2 * torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device) - 1
    else:
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    x_adv = (x + eps * _unit_direction(noise, norm)).clamp(0.0, 1.0)
    x_best = x_adv.clone()
    x_best_adv = x_adv.clone()
    loss_steps = torch.zeros(steps, n, device=x.device)

    logits, loss_now, grad = _loss_and_grad(model, x_adv, y, targets, loss_fn)
    robust = logits.argmax(dim=1) == y
    loss_best = loss_now.clone()
    grad_best = grad.clone()
    step_size = torch.full((n, *([1] * (x.dim() - 1))), 2.0 * eps, device=x.device, dtype=x.dtype)
    x_adv_old = x_adv.clone()
    loss_best_last_check = loss_best.clone()
    reduced_last_check = torch.ones(n, dtype=torch.bool, device=x.device)
    check_gap, since_check = checkpoint_first, 0
    active = robust.nonzero().squeeze(1) if early_stop else torch.arange(n, device=x.device)

    for i in range(steps):
        if active.numel() == 0:
            break
        momentum = 0.75 if i > 0 else 1.0
        xa, x0, g, eta = x_adv[active], x[active], grad[active], step_size[active]
        previous_move = xa - x_adv_old[active]
        x_adv_old[active] = xa
        if norm == "Linf":
            z = _linf_ball(x0, xa + eta * g.sign(), eps)
            z = _linf_ball(x0, xa + (z - xa) * momentum + previous_move * (1 - momentum), eps)
        else:
            z = _l2_ball(x0, xa + eta * _unit_direction(g, "L2"), eps)
            z = _l2_ball(x0, xa + (z - xa) * momentum + previous_move * (1 - momentum), eps)
        x_adv[active] = z

        ya = y[active]
        logits, loss_now, g = _loss_and_grad(model, z, ya, None if targets is None else targets[active], loss_fn)
        grad[active] = g
        correct = logits.argmax(dim=1) == ya
        robust[active] &= correct
        x_best_adv[active[~correct]] = z[~correct]
        loss_steps[i, active] = loss_now
        improved = loss_now > loss_best[active]
        better = active[improved]
        x_best[better] = z[improved]
        grad_best[better] = g[improved]
        loss_best[better] = loss_now[improved]

        since_check += 1
        if since_check == check_gap:
            # condition 1: at most rho·k of the last k steps increased the loss (index i-k wraps to the last row,
            # still zero, exactly as the reference's Python indexing does)
            rows = torch.arange(i - check_gap + 1, i + 1, device=x.device)
            increases = (loss_steps[rows][:, active] > loss_steps[(rows - 1) % steps][:, active]).sum(dim=0)
            oscillating = increases <= check_gap * rho
            # condition 2: the last checkpoint kept η and the best loss has not improved since
            stalled = ~reduced_last_check[active] & (loss_best_last_check[active] >= loss_best[active])
            halve = oscillating | stalled
            reduced_last_check[active] = halve
            loss_best_last_check[active] = loss_best[active]
            idx = active[halve]
            step_size[idx] /= 2.0
            x_adv[idx] = x_best[idx]
            grad[idx] = grad_best[idx]
            check_gap = max(check_gap - checkpoint_decrease, checkpoint_min)
            since_check = 0
        if early_stop:
            active = active[robust[active]]
    return x_best_adv, robust


def apgd(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str = "Linf", loss: str = "ce",
         steps: int = 100, restarts: int = 1, rho: float = 0.75, seed: int | None = 0, mode: str = "eval",
         early_stop: bool = True, channels_last: bool = True) -> Tensor:
    """Untargeted APGD (APGD-CE with ``loss="ce"``, APGD-DLR with ``"dlr"``), ``restarts`` runs on unbroken points.

    x: (B, C, H, W) in [0, 1]; y: (B,). Returns x_adv (B, C, H, W): an adversarial point where one was found, else x.
    The generator is seeded with ``seed`` once per call (as the reference does per batch). ``channels_last``: run a
    CPU convolutional model in NHWC during the attack (faster; results equal up to float rounding).
    """
    norm = check_norm(norm)
    check_unit_range(x, "apgd inputs")
    if loss not in APGD_LOSSES:
        raise ValueError(f"apgd: unknown loss {loss!r} (allowed: {', '.join(APGD_LOSSES)})")
    generator = make_generator(seed)
    x = x.detach().float()
    y = y.detach().long()
    with model_mode(model, mode), torch.no_grad(), _attack_layout(model, x, channels_last) as x:
        x_adv = x.clone()
        robust = model(x).argmax(dim=1) == y
        for _ in range(restarts):
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            adv, still = apgd_single_run(model, x[idx], y[idx], eps=eps, norm=norm, loss=loss, steps=steps, rho=rho,
                                         generator=generator, early_stop=early_stop)
            broken = idx[~still]
            robust[broken] = False
            x_adv[broken] = adv[~still]
    return x_adv.contiguous()


def apgd_targeted(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str = "Linf", steps: int = 100,
                  restarts: int = 1, target_classes: int = 9, rho: float = 0.75, seed: int | None = 0,
                  mode: str = "eval", early_stop: bool = True, channels_last: bool = True) -> Tensor:
    """APGD-T: targeted DLR towards each of the ``target_classes`` highest-scoring wrong classes in turn.

    The target of rank r (2 ≤ r ≤ target_classes + 1) is the r-th largest clean logit of each still-robust point.
    Needs at least 4 classes (the loss uses z_π4) and ``target_classes`` < number of classes.
    """
    norm = check_norm(norm)
    check_unit_range(x, "apgd-t inputs")
    generator = make_generator(seed)
    x = x.detach().float()
    y = y.detach().long()
    with model_mode(model, mode), torch.no_grad(), _attack_layout(model, x, channels_last) as x:
        x_adv = x.clone()
        clean_logits = model(x)
        num_classes = clean_logits.shape[1]
        if num_classes < 4:
            raise ValueError(f"apgd-t: the model has {num_classes} classes; the targeted DLR loss needs at least 4")
        if target_classes >= num_classes:
            raise ValueError(f"apgd-t: target_classes {target_classes} must be < the number of classes {num_classes}")
        robust = clean_logits.argmax(dim=1) == y
        for rank in range(2, target_classes + 2):
            for _ in range(restarts):
                idx = robust.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                targets = model(x[idx]).sort(dim=1)[1][:, -rank]
                adv, still = apgd_single_run(model, x[idx], y[idx], eps=eps, norm=norm, loss="dlr-targeted",
                                             steps=steps, rho=rho, targets=targets, generator=generator,
                                             early_stop=early_stop)
                broken = idx[~still]
                robust[broken] = False
                x_adv[broken] = adv[~still]
    return x_adv.contiguous()


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations (0-based) at which the step size may halve; for documentation and tests."""
    first, minimum, decrease = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    out, gap, i = [], first, first - 1
    while i < steps:
        out.append(i)
        gap = max(gap - decrease, minimum)
        i += gap
    return out


__all__ = ["apgd", "apgd_checkpoints", "apgd_single_run", "apgd_targeted", "targeted_dlr_loss"]
