"""The AutoAttack protocol (Croce & Hein, 2020): a cascade of attacks, each run only on the points still robust,
so the result is the pointwise worst case; with a fixed seed and the reference's sanity checks.

Two back ends:

* ``reference`` — the official code, on PyPI as ``pyautoattack`` (``AutoAttack(...).run_standard_evaluation``).
  Its cascade, checks and attack settings are used as they are; vitlab captures the per-attack robust accuracies and
  warnings from its ``auto-attack`` logger and recounts the final robust accuracy on the returned points.
* ``native`` — vitlab's own cascade with the native APGD-CE / APGD-T (:mod:`vitlab.attacks.apgd`) and the same
  order, batching and per-batch seeding; FAB-T and Square are taken from ``pyautoattack`` (no native version).

``standard`` = APGD-CE (100 iterations, 1 restart) → APGD-T (9 targets) → FAB-T (9 targets) → Square (5000 queries)
for L∞ and L2; ``custom`` runs the attacks given.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from vitlab.attacks.apgd import apgd, apgd_targeted
from vitlab.attacks.threat import check_norm, check_unit_range, max_perturbation, model_mode
from vitlab.errors import ConfigError

STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
KNOWN_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square")
NATIVE_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t")
BACKENDS = ("reference", "native")


@dataclass
class ProtocolReport:
    """What one protocol run measured; accuracies are fractions in [0, 1]."""

    n: int
    norm: str
    eps: float
    seed: int
    version: str
    backend: str
    attacks: list[str]
    clean_accuracy: float
    robust_accuracy: float
    per_attack: dict[str, float] = field(default_factory=dict)  # robust accuracy after each attack of the cascade
    seconds: dict[str, float] = field(default_factory=dict)
    max_perturbation: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def output_range_check(model: nn.Module, x: Tensor) -> None:
    """Raise ValueError when the outputs look like probabilities (AutoAttack's ``check_range_output``): the attacks'
    losses need logits."""
    with torch.no_grad(), model_mode(model, "eval"):
        out = model(x)
    tol = 1e-5
    if out.max() < 1 + tol and out.min() > -tol and ((out.sum(-1) - 1).abs() < tol).all():
        raise ConfigError("model outputs look like probabilities (in [0, 1], summing to 1): attacks need logits; "
                          "remove the final softmax")


class _LogCapture(logging.Handler):
    """Collects the reference implementation's ``auto-attack`` log records."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.messages: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append((record.levelno, record.getMessage()))


def _check_attacks(attacks: list[str], backend: str) -> None:
    for name in attacks:
        if name not in KNOWN_ATTACKS:
            raise ConfigError(f"attack: unknown attack {name!r} (allowed: {', '.join(KNOWN_ATTACKS)})")


class AutoAttackProtocol:
    """Worst-case robust accuracy under a cascade of attacks.

    Args:
        model: logits model on [0, 1] inputs; run in eval mode during the evaluation, its modes restored after.
        norm, eps: the threat model ("Linf" or "L2").
        version: ``standard`` (the four attacks above) or ``custom`` (``attacks`` given).
        seed: the explicit seed of every attack (never a clock-based default).
        backend: ``reference`` (pyautoattack) or ``native``.
        batch_size: points per attack call (the reference's default is 250).
        n_target_classes, apgd_steps, apgd_restarts: APGD settings (standard: 9, 100, 1).
    """

    def __init__(self, model: nn.Module, *, norm: str = "Linf", eps: float = 8 / 255, version: str = "standard",
                 attacks: list[str] | None = None, seed: int = 0, backend: str = "reference", batch_size: int = 250,
                 n_target_classes: int = 9, apgd_steps: int = 100, apgd_restarts: int = 1) -> None:
        self.model = model
        self.norm = check_norm(norm)
        self.eps = float(eps)
        if version not in ("standard", "custom"):
            raise ConfigError(f"version: got {version!r}, expected standard or custom")
        if backend not in BACKENDS:
            raise ConfigError(f"backend: got {backend!r}, expected one of {', '.join(BACKENDS)}")
        if version == "standard":
            if attacks is not None and list(attacks) != list(STANDARD_ATTACKS):
                raise ConfigError("attacks: only version='custom' takes a list of attacks")
            attacks = list(STANDARD_ATTACKS)
        elif not attacks:
            raise ConfigError("attacks: version='custom' needs a non-empty list of attacks")
        _check_attacks(list(attacks), backend)
        if seed is None:
            raise ConfigError("seed: the protocol needs an explicit seed (a clock-based seed is not reproducible)")
        self.attacks = list(attacks)
        self.version = version
        self.seed = int(seed)
        self.backend = backend
        self.batch_size = int(batch_size)
        self.n_target_classes = n_target_classes
        self.apgd_steps = apgd_steps
        self.apgd_restarts = apgd_restarts

    # ---- public ---------------------------------------------------------------------------------------------------
    def run(self, x: Tensor, y: Tensor) -> tuple[Tensor, ProtocolReport]:
        """x: (N, C, H, W) in [0, 1], y: (N,). Returns x_adv (N, C, H, W) and the report."""
        check_unit_range(x, "protocol inputs")
        if x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(f"protocol: {x.shape[0]} images and {y.shape[0]} labels; expected the same number > 0")
        device = next(self.model.parameters()).device
        x, y = x.detach().float().to(device), y.detach().long().to(device)
        output_range_check(self.model, x[: self.batch_size])
        with model_mode(self.model, "eval"):
            if self.backend == "reference":
                x_adv, report = self._run_reference(x, y)
            else:
                x_adv, report = self._run_native(x, y)
            with torch.no_grad():
                robust = torch.cat([self.model(x_adv[i:i + self.batch_size]).argmax(1) == y[i:i + self.batch_size]
                                    for i in range(0, x.shape[0], self.batch_size)])
        report.robust_accuracy = float(robust.float().mean())
        report.max_perturbation = max_perturbation(x_adv, x, self.norm)
        if report.max_perturbation > self.eps + 1e-6 * max(1.0, self.eps):
            report.warnings.append(f"max {self.norm} perturbation {report.max_perturbation:.6f} exceeds eps "
                                   f"{self.eps:.6f}")
        values = [report.clean_accuracy] + [report.per_attack[a] for a in self.attacks if a in report.per_attack]
        if any(b > a + 1e-9 for a, b in zip(values, values[1:])):
            report.warnings.append(f"robust accuracy increased along the cascade: {values}")
        return x_adv, report

    # ---- reference back end ---------------------------------------------------------------------------------------
    def _run_reference(self, x: Tensor, y: Tensor) -> tuple[Tensor, ProtocolReport]:
        from pyautoattack import AutoAttack

        device = x.device
        kwargs: dict[str, Any] = {"device": str(device), "eps": self.eps, "norm": self.norm, "seed": self.seed,
                                  "version": self.version}
        if self.version == "custom":
            kwargs["attacks"] = self.attacks
        adversary = AutoAttack(self.model, **kwargs)
        if self.version == "custom":
            adversary.apgd.n_restarts = self.apgd_restarts
            adversary.apgd_targeted.n_restarts = self.apgd_restarts
            adversary.fab.n_restarts = 1
        adversary.apgd.n_iter = adversary.apgd_targeted.n_iter = self.apgd_steps
        for attack in (adversary.apgd, adversary.apgd_targeted):
            # the reference derives its checkpoint lengths from n_iter at construction; keep them consistent
            attack.n_iter_orig = self.apgd_steps
            attack.n_iter_2 = max(int(0.22 * self.apgd_steps), 1)
            attack.n_iter_min = max(int(0.06 * self.apgd_steps), 1)
            attack.size_decr = max(int(0.03 * self.apgd_steps), 1)
        adversary.apgd_targeted.n_target_classes = self.n_target_classes
        adversary.fab.n_target_classes = self.n_target_classes
        logger = logging.getLogger("auto-attack")
        capture = _LogCapture()
        old_level, old_propagate = logger.level, logger.propagate
        logger.addHandler(capture)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        start = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=self.batch_size)
        finally:
            logger.removeHandler(capture)
            logger.setLevel(old_level)
            logger.propagate = old_propagate
        total = time.perf_counter() - start
        report = ProtocolReport(n=x.shape[0], norm=self.norm, eps=self.eps, seed=self.seed, version=self.version,
                                backend="reference", attacks=self.attacks, clean_accuracy=0.0, robust_accuracy=0.0)
        previous = 0.0
        for level, message in capture.messages:
            if level >= logging.WARNING:
                report.warnings.append(message)
            match = re.match(r"initial accuracy: ([0-9.]+)%", message)
            if match:
                report.clean_accuracy = float(match.group(1)) / 100
            match = re.match(r"robust accuracy after ([A-Z-]+): ([0-9.]+)% \(total time ([0-9.]+) s\)", message)
            if match:
                name = match.group(1).lower()
                report.per_attack[name] = float(match.group(2)) / 100
                report.seconds[name] = float(match.group(3)) - previous
                previous = float(match.group(3))
        report.warnings.extend(str(w.message) for w in caught)
        report.seconds["total"] = total
        return x_adv.to(x.device), report

    # ---- native back end ------------------------------------------------------------------------------------------
    def _run_native(self, x: Tensor, y: Tensor) -> tuple[Tensor, ProtocolReport]:
        report = ProtocolReport(n=x.shape[0], norm=self.norm, eps=self.eps, seed=self.seed, version=self.version,
                                backend="native", attacks=self.attacks, clean_accuracy=0.0, robust_accuracy=0.0)
        report.warnings.extend(self._sanity_checks(x, y))
        bs = self.batch_size
        with torch.no_grad():
            robust = torch.cat([self.model(x[i:i + bs]).argmax(1) == y[i:i + bs] for i in range(0, x.shape[0], bs)])
        report.clean_accuracy = float(robust.float().mean())
        x_adv = x.clone()
        for name in self.attacks:
            start = time.perf_counter()
            idx = robust.nonzero().squeeze(1)
            for i in range(0, idx.numel(), bs):
                batch = idx[i:i + bs]
                adv = self._native_attack(name, x[batch], y[batch])
                with torch.no_grad():
                    broken = self.model(adv).argmax(1) != y[batch]
                robust[batch[broken]] = False
                x_adv[batch[broken]] = adv[broken]
            report.per_attack[name] = float(robust.float().mean())
            report.seconds[name] = time.perf_counter() - start
        report.seconds["total"] = sum(report.seconds.values())
        return x_adv, report

    def _native_attack(self, name: str, x: Tensor, y: Tensor) -> Tensor:
        if name in ("apgd-ce", "apgd-dlr"):
            return apgd(self.model, x, y, eps=self.eps, norm=self.norm, loss=name[5:], steps=self.apgd_steps,
                        restarts=self.apgd_restarts, seed=self.seed)
        if name == "apgd-t":
            return apgd_targeted(self.model, x, y, eps=self.eps, norm=self.norm, steps=self.apgd_steps,
                                 restarts=self.apgd_restarts, target_classes=self.n_target_classes, seed=self.seed)
        # no native FAB-T / Square: the reference attacks, configured as its ``standard`` version
        from pyautoattack.fab_pt import FABAttack_PT
        from pyautoattack.square import SquareAttack

        if name == "fab-t":
            fab = FABAttack_PT(self.model, n_restarts=1, n_iter=100, eps=self.eps, seed=self.seed, norm=self.norm,
                               verbose=False, device=str(x.device))
            fab.targeted = True
            fab.n_target_classes = self.n_target_classes
            return fab.perturb(x, y)
        square = SquareAttack(self.model, p_init=0.8, n_queries=5000, eps=self.eps, norm=self.norm, n_restarts=1,
                              seed=self.seed, verbose=False, device=str(x.device), resc_schedule=False)
        return square.perturb(x, y)

    def _sanity_checks(self, x: Tensor, y: Tensor) -> list[str]:
        """The reference's checks (randomness, dynamic defences, number of classes) on the first batch."""
        from pyautoattack import checks

        logger = logging.getLogger("auto-attack")
        capture = _LogCapture()
        logger.addHandler(capture)
        old_propagate = logger.propagate
        logger.propagate = False
        try:
            xb, yb = x[: self.batch_size], y[: self.batch_size]
            checks.check_randomized(self.model, xb, yb, bs=self.batch_size, logger=logger)
            n_classes = checks.check_range_output(self.model, xb, logger=logger)
            checks.check_dynamic(self.model, xb, False, logger=logger)
            checks.check_n_classes(n_classes, self.attacks, self.n_target_classes, self.n_target_classes,
                                   logger=logger)
        finally:
            logger.removeHandler(capture)
            logger.propagate = old_propagate
        return [message for level, message in capture.messages if level >= logging.WARNING]
