"""How a training DataLoader draws samples: without replacement, Poisson (Opacus) or with replacement.

Used by :class:`~memcallbacks.callbacks.trajectory.LossTrajectoryTracker` to tell, at fit start,
how many samples one epoch is expected to visit (``meta.json["sampling"]``).
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch.utils.data import BatchSampler, RandomSampler, WeightedRandomSampler

from memcallbacks.callbacks.dp import is_poisson_loader
from memcallbacks.callbacks.probes import unwrap_loaders

__all__ = ["SAMPLINGS", "VISITED_FRAC_MEANING", "sampling_of"]

#: how the training DataLoader draws samples (``meta.json["sampling"]``)
SAMPLINGS = ("without_replacement", "poisson", "with_replacement")
VISITED_FRAC_MEANING = {
    "without_replacement": "fraction of the N samples with a finite loss in the column; each sample is drawn once "
    "per epoch, so below 1 means samples were missed (or their loss was NaN/inf)",
    "poisson": "fraction of the N samples drawn at least once (with a finite loss) in the column: Poisson "
    "sampling (Opacus) takes each sample in each of an epoch's 1/q batches with probability q, so an epoch "
    "draws about 1 - (1 - q)^(1/q) ~ 63% of them (expected_visited_frac), some more than once; the first loss "
    "is kept, visits counts every draw",
    "with_replacement": "fraction of the N samples drawn at least once (with a finite loss) in the column: the "
    "sampler draws with replacement, so some are drawn more than once and others not at all "
    "(expected_visited_frac); the first loss is kept, visits counts every draw",
}


def _sampler_of(loader: Any) -> Any:
    """The sampler that draws the indices of ``loader``: its batch sampler's, else its own."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    if isinstance(batch_sampler, BatchSampler):
        return batch_sampler.sampler
    return getattr(loader, "sampler", None)


def sampling_of(loader: Any) -> tuple[str, float | None]:
    """How a training DataLoader draws samples, and the expected fraction of them one epoch visits.

    ``"poisson"``: Opacus' ``DPDataLoader`` (``UniformWithReplacementSampler`` or its
    distributed form): each of the ``steps`` batches of an epoch (``1/q`` by default) takes
    each sample independently with probability ``q``, so an epoch visits a sample
    ``Binomial(steps, q)`` times and visits ``1 - (1 - q)^steps`` of them (about ``1 - 1/e =
    0.63``). ``"with_replacement"``: a ``RandomSampler`` or ``WeightedRandomSampler`` with
    ``replacement=True`` drawing ``m`` indices with probabilities ``p_i``: the expected visited
    fraction is the mean of ``1 - (1 - p_i)^m``. ``"without_replacement"``: any other sampler,
    assumed to visit each sample once per epoch (expected fraction 1, not computed: ``None``).

    Args:
        loader: the Trainer's ``train_dataloader`` (a DataLoader, or a collection of them).

    Returns:
        ``(sampling, expected_visited_frac)``; ``expected_visited_frac`` is ``None`` when unknown.

    Example:
        >>> from torch.utils.data import DataLoader, RandomSampler
        >>> data = list(range(4))
        >>> sampling_of(DataLoader(data, sampler=RandomSampler(data, replacement=True)))
        ('with_replacement', 0.68359375)
    """
    found = list(unwrap_loaders(loader))
    if len(found) != 1:
        return "without_replacement", None
    dl = found[0]
    # an Opacus loader exists only once opacus is imported: otherwise skip its import (~0.2 s)
    if "opacus" in sys.modules and is_poisson_loader(dl):
        bs = getattr(dl, "batch_sampler", None)
        q = getattr(bs, "sample_rate", None)
        steps = getattr(bs, "steps", getattr(bs, "num_batches", None))
        if q is None or steps is None:
            return "poisson", None
        return "poisson", float(1.0 - (1.0 - float(q)) ** int(steps))
    sampler = _sampler_of(dl)
    if isinstance(sampler, (RandomSampler, WeightedRandomSampler)) and sampler.replacement:
        if isinstance(sampler, WeightedRandomSampler):
            p = sampler.weights.double() / sampler.weights.double().sum()
        else:
            n = len(sampler.data_source)
            p = torch.full((n,), 1.0 / max(n, 1), dtype=torch.float64)
        return "with_replacement", float((1.0 - (1.0 - p) ** int(sampler.num_samples)).mean())
    return "without_replacement", None
