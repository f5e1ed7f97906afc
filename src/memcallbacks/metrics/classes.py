"""torchmetrics ``Metric`` classes over the functional membership core, synced across ranks.

For computing a membership-inference metric inside your own ``validation_step`` (or any loop),
with the states gathered across processes by torchmetrics, exactly as Lightning users compute
accuracy with ``torchmetrics.Accuracy``. The numbers come from the same functions the callbacks
use (:mod:`memcallbacks.metrics.membership`):

* :class:`LossThresholdMIA`: the loss-threshold attack of Yeom, Giacomelli, Fredrikson and Jha,
  "Privacy Risk in Machine Learning: Analyzing the Connection to Overfitting", CSF 2018, with the
  low-FPR TPR of Carlini et al., "Membership Inference Attacks From First Principles", S&P 2022;
  ``compute()`` returns the same :class:`~memcallbacks.metrics.MembershipReport` as
  :func:`~memcallbacks.metrics.membership_inference` on all the losses seen.
* :class:`LossGap`: mean non-member loss minus mean member loss (:func:`~memcallbacks.metrics.loss_gap`).

Distributed: per-sample losses are ``cat`` states (``dist_reduce_fx="cat"``) and the gap's sums
and counts ``sum`` states, so ``compute()`` gives every rank the result over all ranks' samples.
The attack needs every loss (an exact ROC is a sort), so its state grows with the samples seen:
call ``reset()`` after each ``compute()``, as with any torchmetrics ``Metric``. A sample that
``DistributedSampler`` padding repeats on two ranks is counted twice (the states carry no sample
id); for exact de-duplication use :class:`~memcallbacks.MembershipInferenceMonitor`.

This module imports ``torchmetrics``; ``memcallbacks.metrics`` imports it only when one of these
classes is first used.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from memcallbacks.metrics.membership import MembershipReport, check_fprs, membership_inference

__all__ = ["LossGap", "LossThresholdMIA"]


def _flat_losses(value: Any, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(value)
    if (
        tensor.is_complex()
        or tensor.dtype == torch.bool
        or not (tensor.is_floating_point() or tensor.dtype.is_signed)
    ):
        raise TypeError(f"`{name}` must hold real per-sample losses, got dtype {tensor.dtype}")
    if tensor.dim() > 1:
        raise ValueError(
            f"`{name}` must be a 1-D tensor of per-sample losses, got shape {tuple(tensor.shape)}; "
            "compute the loss with reduction='none'"
        )
    return tensor.detach().reshape(-1).to(torch.float64)


class LossThresholdMIA(Metric):
    """Loss-threshold membership inference (Yeom et al. 2018) as a torchmetrics ``Metric``.

    Members are the positive class, score ``-loss``; the ROC is exact (one sort of all the
    losses seen), and ``compute()`` returns the :class:`~memcallbacks.metrics.MembershipReport`
    that :func:`~memcallbacks.metrics.membership_inference` gives on every loss passed to
    ``update`` since the last ``reset`` (on every rank, under DDP). Either argument of ``update``
    may be empty, so members and non-members can come from different batches or dataloaders.

    Args:
        fprs: false-positive rates in ``(0, 1)`` at which the report gives the TPR.
        **kwargs: torchmetrics ``Metric`` options (``sync_on_compute``, ``process_group``, ...).

    Raises:
        TypeError: non-numeric losses or ``fprs``.
        ValueError: losses that are not 1-D, FPRs outside ``(0, 1)``; at ``compute()``, no member
            or no non-member loss, or a NaN/inf loss (filter them first, as the functional does).

    Example:
        >>> import torch
        >>> metric = LossThresholdMIA(fprs=(0.5,))
        >>> metric.update(torch.tensor([0.1, 0.2]), torch.tensor([0.25]))
        >>> metric.update(torch.tensor([0.3]), torch.tensor([0.4, 0.5]))
        >>> report = metric.compute()
        >>> round(report.auc, 4), report.tpr_at_fpr
        (0.8889, {0.5: 1.0})
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    member_losses: list[torch.Tensor] | torch.Tensor
    nonmember_losses: list[torch.Tensor] | torch.Tensor

    def __init__(self, fprs: Iterable[float] = (0.001, 0.01, 0.1), **kwargs: Any) -> None:
        self.fprs = check_fprs(fprs)
        super().__init__(**kwargs)
        self.add_state("member_losses", default=[], dist_reduce_fx="cat")
        self.add_state("nonmember_losses", default=[], dist_reduce_fx="cat")

    def update(self, member_losses: Any, nonmember_losses: Any) -> None:
        """Add per-sample losses of members ``[M]`` and of non-members ``[N]`` (either may be empty)."""
        self.member_losses.append(_flat_losses(member_losses, "member_losses"))  # type: ignore[union-attr]
        self.nonmember_losses.append(_flat_losses(nonmember_losses, "nonmember_losses"))  # type: ignore[union-attr]

    def _all_losses(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The losses gathered from every rank (torchmetrics syncs the states around this call)."""
        return _cat(self.member_losses), _cat(self.nonmember_losses)

    def _wrap_compute(self, compute: Callable[..., Any]) -> Callable[..., Any]:
        # torchmetrics' wrapper syncs, caches and clones tensors, and walks the result as a
        # collection, which a frozen dataclass refuses: let it wrap the tensor step, build the
        # report from its output
        synced = super()._wrap_compute(self._all_losses)

        @functools.wraps(compute)
        def wrapped() -> MembershipReport:
            members, nonmembers = synced()
            return membership_inference(members.cpu(), nonmembers.cpu(), fprs=self.fprs)

        return wrapped

    def compute(self) -> MembershipReport:
        """The :class:`~memcallbacks.metrics.MembershipReport` over every loss seen (all ranks)."""
        members, nonmembers = self._all_losses()
        return membership_inference(members.cpu(), nonmembers.cpu(), fprs=self.fprs)


class LossGap(Metric):
    """Mean non-member loss minus mean member loss, accumulated over batches and ranks.

    The generalisation gap that Yeom et al. (CSF 2018) tie to membership advantage; equals
    :func:`~memcallbacks.metrics.loss_gap` on all the losses seen. Kept as float64 sums and
    counts, so the state does not grow with the samples.

    Args:
        **kwargs: torchmetrics ``Metric`` options.

    Example:
        >>> import torch
        >>> gap = LossGap()
        >>> gap.update(torch.tensor([0.5, 1.5]), torch.tensor([2.0]))
        >>> gap.update(torch.tensor([]), torch.tensor([3.0]))
        >>> float(gap.compute())
        1.5
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    member_sum: torch.Tensor
    member_count: torch.Tensor
    nonmember_sum: torch.Tensor
    nonmember_count: torch.Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("member_sum", "member_count", "nonmember_sum", "nonmember_count"):
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, member_losses: Any, nonmember_losses: Any) -> None:
        """Add per-sample losses of members ``[M]`` and of non-members ``[N]`` (either may be empty)."""
        m = _flat_losses(member_losses, "member_losses").to(self.member_sum.device)
        n = _flat_losses(nonmember_losses, "nonmember_losses").to(self.member_sum.device)
        self.member_sum += m.sum()
        self.member_count += m.numel()
        self.nonmember_sum += n.sum()
        self.nonmember_count += n.numel()

    def compute(self) -> torch.Tensor:
        """``mean(non-member losses) - mean(member losses)`` (NaN when either side saw no loss)."""
        return self.nonmember_sum / self.nonmember_count - self.member_sum / self.member_count


def _cat(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    if isinstance(state, list):
        return dim_zero_cat(state) if state else torch.zeros(0, dtype=torch.float64)
    return state.reshape(-1)
