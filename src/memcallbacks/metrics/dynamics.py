"""Per-sample training-dynamics statistics over a loss trajectory.

Given each sample's loss at every epoch it was visited (and optionally whether it was
classified correctly), computes the statistics of:

* Swayamdipta et al., "Dataset Cartography: Mapping and Diagnosing Datasets with Training
  Dynamics", EMNLP 2020: *confidence* = mean over epochs of the probability of the gold
  label, *variability* = its population standard deviation (ddof=0), *correctness* =
  fraction of epochs classified correctly. For a cross-entropy loss that probability is
  ``exp(-loss)``, so the data map needs no extra model output.
* Toneva et al., "An Empirical Study of Example Forgetting during Deep Neural Network
  Learning", ICLR 2019: *forgetting events* = transitions from correct to incorrect
  between consecutive visits of a sample.

**Never-learned convention.** We count actual correct-to-incorrect transitions only. A
sample that is never classified correctly has 0 forgetting events and ``learned_epoch ==
-1``; so has a sample that is incorrect at its last visit. Toneva et al.'s code instead
counts a never-learned sample as forgotten (infinitely often, for ranking), and Dataset
Cartography uses a sentinel of 1000; select those samples with ``learned_epoch == -1``.

Statistics are streamed by :class:`TrajectoryAccumulator` (memory O(N), Welford updates in
float64), and :func:`trajectory_statistics` computes them from a full ``[N, E]`` matrix by
feeding its columns to the same accumulator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from memcallbacks.utilities.validation import as_numpy, check_choice, check_float_array, check_int

__all__ = [
    "MEMORISATION_SCORES",
    "TrajectoryAccumulator",
    "TrajectoryStatistics",
    "memorisation_score",
    "top_k",
    "trajectory_statistics",
    "unlearned_fraction",
    "zlib_entropy",
]

#: The rankings :func:`memorisation_score` offers (``by=``); the first is the default.
MEMORISATION_SCORES = ("mean_loss", "min_loss", "low_loss", "loss_drop", "calibrated_loss")
_LN2 = math.log(2.0)


@dataclass(frozen=True, eq=False)
class TrajectoryStatistics:
    """Per-sample statistics over the recorded epochs; every array has shape ``[N]``.

    Samples never visited (all losses NaN) have ``count == 0`` and NaN statistics.

    Attributes:
        count: number of epochs the sample was visited (non-NaN loss), int64.
        mean: mean loss over visits.
        std: population standard deviation (ddof=0) of the loss over visits.
        last: loss at the last visit.
        min: lowest loss over visits.
        confidence: mean of ``exp(-loss)``, the gold-label probability for cross-entropy
            (Dataset Cartography's confidence).
        variability: population std (ddof=0) of ``exp(-loss)`` (Cartography's variability).
        correctness: fraction of visits classified correctly; ``None`` without correctness.
        forgetting_events: number of correct-to-incorrect transitions between consecutive
            visits (Toneva et al.), int64; ``None`` without correctness.
        learned_epoch: first epoch index from which the sample is correct at every later
            visit; -1 if it never was or is incorrect at its last visit, int64; ``None``
            without correctness.
        first: loss at the first visit (NaN if never visited); ``None`` when the statistics
            were built by an older version that did not track it.

    Example:
        >>> stats = trajectory_statistics([[1.0, 3.0], [np.nan, 2.0]])
        >>> stats.count, stats.mean, stats.std
        (array([2, 1]), array([2., 2.]), array([1., 0.]))
    """

    count: NDArray[np.int64]
    mean: NDArray[np.float64]
    std: NDArray[np.float64]
    last: NDArray[np.float64]
    min: NDArray[np.float64]
    confidence: NDArray[np.float64]
    variability: NDArray[np.float64]
    correctness: NDArray[np.float64] | None = None
    forgetting_events: NDArray[np.int64] | None = None
    learned_epoch: NDArray[np.int64] | None = None
    first: NDArray[np.float64] | None = None

    @property
    def num_samples(self) -> int:
        """Number of samples ``N``."""
        return int(self.count.shape[0])


_STATE_KEYS = (
    "count",
    "loss_mean",
    "loss_m2",
    "prob_mean",
    "prob_m2",
    "last",
    "min",
    "correct_count",
    "forgetting_events",
    "previous_correct",
    "streak_start",
)
_OPTIONAL_STATE_KEYS = ("first",)  # absent from states saved before it existed


class TrajectoryAccumulator:
    """Streams per-sample trajectory statistics one epoch at a time, in O(N) memory.

    Loss and ``exp(-loss)`` moments use Welford's update in float64. Epochs are numbered
    by the order of :meth:`update` calls, from 0.

    Args:
        num_samples: number of samples ``N`` (>= 0).

    Raises:
        ValueError: if ``num_samples`` is negative.
        TypeError: if ``num_samples`` is not an int.

    Example:
        >>> import numpy as np
        >>> acc = TrajectoryAccumulator(2)
        >>> acc.update([2.0, np.nan], [False, False])
        >>> acc.update([0.5, 1.0], [True, False])
        >>> acc.update([1.0, 3.0], [False, True])
        >>> stats = acc.compute()
        >>> stats.count, stats.mean, stats.forgetting_events, stats.learned_epoch
        (array([3, 2]), array([1.16666667, 2.        ]), array([1, 0]), array([-1,  2]))
    """

    num_samples: int
    num_epochs: int
    has_correctness: bool | None
    _count: NDArray[np.int64]
    _loss_mean: NDArray[np.float64]
    _loss_m2: NDArray[np.float64]
    _prob_mean: NDArray[np.float64]
    _prob_m2: NDArray[np.float64]
    _last: NDArray[np.float64]
    _first: NDArray[np.float64]
    _min: NDArray[np.float64]
    _correct_count: NDArray[np.int64]
    _forgetting_events: NDArray[np.int64]
    _previous_correct: NDArray[np.int8]
    _streak_start: NDArray[np.int64]

    def __init__(self, num_samples: int) -> None:
        n = check_int("num_samples", num_samples, minimum=0, hint="pass the number of samples N")
        self.num_samples = n
        self.num_epochs = 0
        # None until the first update says whether correctness is tracked
        self.has_correctness = None
        self._count = np.zeros(n, dtype=np.int64)
        self._loss_mean = np.zeros(n)
        self._loss_m2 = np.zeros(n)
        self._prob_mean = np.zeros(n)
        self._prob_m2 = np.zeros(n)
        self._last = np.full(n, np.nan)
        self._first = np.full(n, np.nan)
        self._min = np.full(n, np.inf)
        self._correct_count = np.zeros(n, dtype=np.int64)
        self._forgetting_events = np.zeros(n, dtype=np.int64)
        # correctness at the previous visit: -1 no visit yet, 0 incorrect, 1 correct
        self._previous_correct = np.full(n, -1, dtype=np.int8)
        # epoch at which the current run of correct visits began; -1 when not correct now
        self._streak_start = np.full(n, -1, dtype=np.int64)

    def update(self, epoch_losses: Any, epoch_correct: Any = None) -> None:
        """Adds one epoch.

        Args:
            epoch_losses: loss of each sample at this epoch, shape ``[N]``; NaN marks a
                sample not visited this epoch.
            epoch_correct: whether each sample was classified correctly, shape ``[N]``
                (bool, or 0/1), or ``None``. Ignored where the loss is NaN. Give it at every
                update or at none.

        Raises:
            ValueError: on a shape mismatch, an infinite loss, or correctness given at some
                updates and not others.
        """
        losses = check_float_array(
            epoch_losses,
            "epoch_losses",
            allow_nan=True,
            allow_empty=True,
            hint="; pass one loss per sample, NaN where a sample was not visited",
        )
        if losses.shape != (self.num_samples,):
            raise ValueError(
                f"`epoch_losses` must have shape ({self.num_samples},), got {tuple(losses.shape)}"
            )
        correct = None if epoch_correct is None else self._check_correct(epoch_correct)
        has_correctness = correct is not None
        if self.has_correctness is None:
            self.has_correctness = has_correctness
        elif self.has_correctness != has_correctness:
            state = "given" if self.has_correctness else "None"
            raise ValueError(
                f"`epoch_correct` was {state} at earlier updates but is "
                f"{'given' if has_correctness else 'None'} now; pass it at every update or at none"
            )

        visited = ~np.isnan(losses)
        # every sample visited (a full epoch): slices instead of gathers and scatters, same values
        index: Any = slice(None) if visited.all() else np.flatnonzero(visited)
        x = losses[index]
        count = self._count[index] + 1
        self._count[index] = count
        # Welford, loss
        delta = x - self._loss_mean[index]
        mean = self._loss_mean[index] + delta / count
        self._loss_m2[index] += delta * (x - mean)
        self._loss_mean[index] = mean
        # Welford, gold-label probability exp(-loss)
        p = np.exp(-x)
        delta = p - self._prob_mean[index]
        mean = self._prob_mean[index] + delta / count
        self._prob_m2[index] += delta * (p - mean)
        self._prob_mean[index] = mean
        self._last[index] = x
        new = count == 1
        self._first[new if isinstance(index, slice) else index[new]] = x[new]
        self._min[index] = np.minimum(self._min[index], x)

        if correct is not None:
            now = correct[index]
            before = self._previous_correct[index]
            self._correct_count[index] += now
            self._forgetting_events[index] += (before == 1) & ~now
            streak = self._streak_start[index]
            self._streak_start[index] = np.where(now, np.where(before == 1, streak, self.num_epochs), -1)
            self._previous_correct[index] = now.astype(np.int8)
        self.num_epochs += 1

    def _check_correct(self, epoch_correct: Any) -> NDArray[np.bool_]:
        array = as_numpy(epoch_correct, "epoch_correct")
        if array.shape != (self.num_samples,):
            raise ValueError(
                f"`epoch_correct` must have shape ({self.num_samples},) like `epoch_losses`, "
                f"got {tuple(array.shape)}"
            )
        if array.dtype == np.bool_:
            return array
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise TypeError(f"`epoch_correct` must be bool (or 0/1), got dtype {array.dtype}")
        if not np.isin(array, (0, 1)).all():
            bad = array[~np.isin(array, (0, 1))].flat[0]
            raise ValueError(f"`epoch_correct` must be bool or 0/1, got {bad.item()!r}")
        return array.astype(bool)

    def compute(self) -> TrajectoryStatistics:
        """Returns the statistics of the epochs added so far (the state is unchanged).

        Returns:
            A :class:`TrajectoryStatistics`.
        """
        # each statistic is computed in one fresh array, in place: at 200,000 samples a new array
        # costs more in page faults than the arithmetic does
        count = self._count.copy()
        visited = count > 0
        unvisited = None if visited.all() else ~visited

        def nan_where_unvisited(values: np.ndarray) -> np.ndarray:  # fresh `values`, modified
            if unvisited is not None:
                values[unvisited] = np.nan
            return values

        def per_visit(values: np.ndarray) -> np.ndarray:  # fresh float `values` / count, in place
            np.divide(values, count, out=values, where=visited)
            return nan_where_unvisited(values)

        def root_mean_square(m2: np.ndarray) -> np.ndarray:  # sqrt(max(m2, 0) / count)
            out = np.maximum(m2, 0.0)
            np.divide(out, count, out=out, where=visited)
            return nan_where_unvisited(np.sqrt(out, out=out))

        mean = nan_where_unvisited(self._loss_mean.copy())
        std = root_mean_square(self._loss_m2)
        confidence = nan_where_unvisited(self._prob_mean.copy())
        variability = root_mean_square(self._prob_m2)
        minimum = nan_where_unvisited(self._min.copy())
        correctness = forgetting = learned = None
        if self.has_correctness:
            correctness = per_visit(self._correct_count.astype(np.float64))
            forgetting = self._forgetting_events.copy()
            learned = self._streak_start.copy()
        return TrajectoryStatistics(
            count=count,
            mean=mean,
            std=std,
            last=self._last.copy(),
            min=minimum,
            confidence=confidence,
            variability=variability,
            correctness=correctness,
            forgetting_events=forgetting,
            learned_epoch=learned,
            first=self._first.copy(),
        )

    def state_dict(self) -> dict[str, np.ndarray]:
        """State as a dict of numpy arrays (``np.savez`` and ``torch.load(weights_only=True)`` safe).

        Returns:
            dict of copies of the internal arrays plus 0-d arrays ``num_samples``,
            ``num_epochs`` and ``has_correctness`` (-1 unknown, 0 no, 1 yes).
        """
        state = {key: getattr(self, f"_{key}").copy() for key in (*_STATE_KEYS, *_OPTIONAL_STATE_KEYS)}
        state["num_samples"] = np.array(self.num_samples, dtype=np.int64)
        state["num_epochs"] = np.array(self.num_epochs, dtype=np.int64)
        has = -1 if self.has_correctness is None else int(self.has_correctness)
        state["has_correctness"] = np.array(has, dtype=np.int8)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores a state from :meth:`state_dict`.

        Args:
            state_dict: as returned by :meth:`state_dict` (arrays may be numpy or torch).

        Raises:
            ValueError: if ``num_samples`` differs from this accumulator's or a key is missing.
        """
        num_samples = int(as_numpy(state_dict.get("num_samples", self.num_samples), "num_samples"))
        if num_samples != self.num_samples:
            raise ValueError(
                f"`state_dict` is for {num_samples} samples, this accumulator has {self.num_samples}"
            )
        missing = [key for key in _STATE_KEYS if key not in state_dict]
        if missing:
            raise ValueError(f"`state_dict` lacks keys {missing}; was it made by TrajectoryAccumulator?")
        for key in _STATE_KEYS:
            current = getattr(self, f"_{key}")
            value = np.array(as_numpy(state_dict[key], key), dtype=current.dtype)
            if value.shape != current.shape:
                raise ValueError(f"`state_dict[{key!r}]` must have shape {current.shape}, got {value.shape}")
            setattr(self, f"_{key}", value)
        if "first" in state_dict:
            self._first = np.array(as_numpy(state_dict["first"], "first"), dtype=np.float64).reshape(
                self._last.shape
            )
        else:  # an older state: the first visit is unknown where the sample was visited
            self._first = np.full(self.num_samples, np.nan)
        self.num_epochs = int(as_numpy(state_dict.get("num_epochs", 0), "num_epochs"))
        has = int(as_numpy(state_dict.get("has_correctness", -1), "has_correctness"))
        self.has_correctness = None if has < 0 else bool(has)


def trajectory_statistics(losses: Any, correct: Any = None) -> TrajectoryStatistics:
    """Per-sample statistics of a full loss matrix (epochs as columns).

    Feeds the columns to a :class:`TrajectoryAccumulator`, so streamed and batch results
    are the same.

    Args:
        losses: shape ``[N, E]``, the loss of sample ``i`` at epoch ``j``; NaN where the
            sample was not visited. float16 input is computed in float64.
        correct: ``[N, E]`` bool (or 0/1) correctness, or ``None``.

    Returns:
        A :class:`TrajectoryStatistics`.

    Raises:
        ValueError: if ``losses`` is not 2-D, holds infinities, or ``correct`` has another
            shape.

    Example:
        >>> import numpy as np
        >>> losses = np.array([[1.0, 0.5, np.nan, 0.2], [np.nan] * 4])
        >>> correct = np.array([[False, True, False, True], [False] * 4])
        >>> stats = trajectory_statistics(losses, correct)
        >>> stats.count, stats.last, stats.learned_epoch
        (array([3, 0]), array([0.2, nan]), array([ 1, -1]))
    """
    matrix = check_float_array(
        losses,
        "losses",
        ndim=2,
        allow_nan=True,
        allow_empty=True,
        hint="; pass an [N, E] matrix with NaN where a sample was not visited",
    )
    correct_matrix = None
    if correct is not None:
        correct_matrix = as_numpy(correct, "correct")
        if correct_matrix.shape != matrix.shape:
            raise ValueError(
                f"`correct` must have the shape of `losses` {tuple(matrix.shape)}, "
                f"got {tuple(correct_matrix.shape)}"
            )
    accumulator = TrajectoryAccumulator(matrix.shape[0])
    for epoch in range(matrix.shape[1]):
        accumulator.update(matrix[:, epoch], None if correct_matrix is None else correct_matrix[:, epoch])
    if matrix.shape[1] == 0:
        accumulator.has_correctness = correct is not None
    return accumulator.compute()


def memorisation_score(
    stats: TrajectoryStatistics, by: str = "mean_loss", *, reference: Any = None
) -> NDArray[np.float64]:
    """Per-sample memorisation score, higher = more memorised; ``by`` chooses which.

    ``by="mean_loss"`` (default; classifiers): the mean loss over the recorded epochs, the
    area under a sample's loss curve normalised by its number of visits. Samples a model can
    only fit late, by memorising them (mislabelled, atypical), keep a high loss for longer:
    Pleiss et al., "Identifying Mislabeled Data using the Area Under the Margin Ranking",
    NeurIPS 2020, rank samples by a margin averaged over training in the same way; on
    digits with 10% flipped labels the mean loss ranks flipped samples with AUROC 0.999.
    Break ties with ``stats.variability`` (``top_k(score, k, tiebreak=stats.variability)``).

    ``by="calibrated_loss"`` (language models; needs ``reference``): the sample's reference
    loss minus the lowest loss it reached, ``reference - min``. A memorised sequence has a
    *low* loss, but so has text that is easy for any model (templates, boilerplate); the
    difficulty calibration of Watson et al., "On the Importance of Difficulty Calibration in
    Membership Inference Attacks", ICLR 2022, subtracts what a reference that was not trained
    on the sample achieves, so the score measures what training did to the sample. It is the
    per-token log-likelihood ratio ``(log p_model(x) - log p_ref(x)) / T`` at the model's best
    visit. The reference is one loss per sample in the units of the tracked loss (for a mean
    token loss: nats per token): a reference model's loss (a model trained on other data of
    the same distribution; in fine-tuning, the pre-trained model before fine-tuning), or, with
    no reference model, the zlib entropy of the text (:func:`zlib_entropy`), the
    model-free reference of Carlini et al., "Extracting Training Data from Large Language
    Models", USENIX Security 2021. zlib cannot compress very short texts, so it gives them a
    high reference; compare texts of similar length, or use a reference model, when the
    lengths differ a lot. On the demo (``memcallbacks demo``: 10,000 payment records, canaries
    inserted 1-32 times, 2 epochs until early stopping) 94 of the 96 copies (98%) of the
    canaries inserted 16 or 32 times rank in the top 1% with the zlib reference (18, 19%, by
    ``min_loss``), above every single-copy canary of the same length and format.

    ``by="min_loss"`` (language models, no reference): minus the lowest loss the sample
    reached. A sequence copied into the training data many times ends far below text whose
    randomness no model can predict (names, amounts), the loss-threshold signal of Yeom et
    al., CSF 2018; templated text that any model predicts well ranks high too. The lowest loss
    is steadier than the last one (one noisy epoch does not move it).

    ``by="low_loss"``: minus the loss at the last visit (the model as it is now).

    ``by="loss_drop"``: the loss at the first visit minus the loss at the last visit, a
    calibrated loss (Watson et al. 2022) with the model at the first visit as the reference.
    Use it with ``source="probe"``, where the first visit is one evaluation of every sample by
    the same model. With step capture the first visits are spread over the first epoch, whose
    early steps see losses far above its late ones: on the canary corpus above the drop ranked
    no canary copy in the top 1%.

    Unvisited samples, and samples whose reference is NaN, get NaN (``top_k`` puts them last).

    Args:
        stats: statistics from :func:`trajectory_statistics` or
            :meth:`TrajectoryAccumulator.compute`.
        by: one of :data:`MEMORISATION_SCORES`: ``"mean_loss"``, ``"min_loss"``, ``"low_loss"``,
            ``"loss_drop"``, ``"calibrated_loss"``.
        reference: ``[N]`` per-sample reference losses (NaN: no reference), used by
            ``"calibrated_loss"`` and ignored by the others.

    Returns:
        float64 array of shape ``[N]``.

    Raises:
        TypeError: if ``stats`` is not a :class:`TrajectoryStatistics`.
        ValueError: unknown ``by``; ``"loss_drop"`` on statistics without first-visit losses;
            ``"calibrated_loss"`` without ``reference``, or a reference of another length or
            with an infinite value.

    Example:
        >>> import numpy as np
        >>> stats = trajectory_statistics(np.array([[2.0, 0.1], [0.3, 0.1]]))
        >>> memorisation_score(stats)
        array([1.05, 0.2 ])
        >>> memorisation_score(stats, by="min_loss")
        array([-0.1, -0.1])
        >>> memorisation_score(stats, by="loss_drop")
        array([1.9, 0.2])
        >>> memorisation_score(stats, by="calibrated_loss", reference=[2.5, 0.4])
        array([2.4, 0.3])
    """
    if not isinstance(stats, TrajectoryStatistics):
        raise TypeError(f"`stats` must be a TrajectoryStatistics, got {type(stats).__name__}")
    check_choice("by", by, MEMORISATION_SCORES)
    if by == "mean_loss":
        return np.array(stats.mean, dtype=np.float64, copy=True)
    if by == "min_loss":
        return -np.asarray(stats.min, dtype=np.float64)
    if by == "low_loss":
        return -np.asarray(stats.last, dtype=np.float64)
    if by == "calibrated_loss":
        return check_reference(reference, stats.num_samples) - np.asarray(stats.min, dtype=np.float64)
    if stats.first is None:
        raise ValueError(
            "`by='loss_drop'` needs each sample's first-visit loss, which these statistics lack; "
            "recompute them with trajectory_statistics() or TrajectoryAccumulator"
        )
    return np.asarray(stats.first, dtype=np.float64) - np.asarray(stats.last, dtype=np.float64)


def check_reference(reference: Any, num_samples: int) -> NDArray[np.float64]:
    """``reference`` as a float64 ``[num_samples]`` array of reference losses (NaN allowed, no inf).

    Raises:
        ValueError: ``reference`` is ``None``, not 1-D, of another length, or holds an infinity.
        TypeError: it does not hold real numbers.
    """
    if reference is None:
        raise ValueError(
            "`by='calibrated_loss'` needs `reference=`: one reference loss per sample in the units of the "
            "tracked loss, e.g. zlib_entropy(texts) or a reference model's per-sample losses "
            "(LossTrajectoryTracker(reference=...))"
        )
    values = check_float_array(
        reference,
        "reference",
        allow_nan=True,
        allow_empty=True,
        hint="; pass one finite reference loss per sample (NaN where there is none)",
    )
    if values.shape != (num_samples,):
        raise ValueError(
            f"`reference` must hold one loss per sample ({num_samples}), got shape {tuple(values.shape)}"
        )
    return values


def zlib_entropy(texts: Any, num_tokens: Any = None) -> NDArray[np.float64]:
    """zlib entropy of each text in nats per token: a model-free reference loss.

    Carlini et al., "Extracting Training Data from Large Language Models", USENIX Security
    2021, calibrate a language model's loss by the text's zlib entropy, the length of its
    zlib-compressed form: text the model finds far more likely than a general-purpose
    compressor does is suspected memorised. Here the compressed length in bits (zlib level 9,
    :func:`memcallbacks.metrics.sequence.zlib_length`) is converted to nats and divided by the number of
    tokens the loss averages over, ``8 ln 2 * zlib_length(text) / num_tokens``, so it can be
    passed as ``reference=`` to :func:`memorisation_score` (``by="calibrated_loss"``) and
    :class:`~memcallbacks.LossTrajectoryTracker` next to a mean token loss. Very short texts
    do not compress (the zlib header and checksum alone are 6 bytes), so their reference is
    high.

    Args:
        texts: ``N`` strings (UTF-8) or bytes, in the order of the samples (dataset index).
        num_tokens: ``[N]`` number of tokens each sample's loss is averaged over (for a causal
            LM: the scored next-token targets); ``None``: the number of characters (bytes for
            ``bytes``), right for character-level models whose loss averages over the text's
            characters.

    Returns:
        float64 array ``[N]`` (nats per token).

    Raises:
        TypeError: an item is neither ``str`` nor ``bytes``.
        ValueError: an empty text, a token count below 1, or ``num_tokens`` of another length.

    Example:
        >>> import math, zlib
        >>> nats = 8 * math.log(2) * len(zlib.compress(b"hello", 9))  # 13 bytes
        >>> bool(np.isclose(zlib_entropy(["hello"])[0], nats / 5))
        True
    """
    from memcallbacks.metrics.sequence import zlib_length

    items = [texts] if isinstance(texts, (str, bytes)) else list(texts)
    for i, item in enumerate(items):
        if not isinstance(item, (str, bytes)):
            raise TypeError(f"`texts[{i}]` must be a str or bytes, got {type(item).__name__}")
    if num_tokens is None:
        counts = np.array([len(t) for t in items], dtype=np.float64)
    else:
        counts = check_float_array(num_tokens, "num_tokens", allow_empty=True)
        if counts.shape != (len(items),):
            raise ValueError(
                f"`num_tokens` must hold one count per text ({len(items)}), got shape {tuple(counts.shape)}"
            )
    if counts.size and counts.min() < 1:
        i = int(np.argmin(counts))
        raise ValueError(
            f"text {i} has {counts[i]:g} tokens; every text needs at least one (drop empty texts, or pass "
            "the number of scored tokens as `num_tokens`)"
        )
    bits = np.array([8 * zlib_length(t) for t in items], dtype=np.float64)
    return bits * _LN2 / counts


def unlearned_fraction(stats: TrajectoryStatistics) -> float:
    """Fraction of the visited samples (``count > 0``) that are not learned.

    With correctness (classifiers that return it): not learned means ``learned_epoch == -1``,
    i.e. incorrect at the last visit or never correct (Toneva et al. 2019). Without it: the
    gold-label probability at the last visit is below one half, ``exp(-last) < 0.5``, i.e.
    ``last > ln 2`` (the probability Dataset Cartography reads off a cross-entropy loss;
    Swayamdipta et al. 2020); a NaN last loss counts as not learned.

    Args:
        stats: statistics from :func:`trajectory_statistics` or
            :meth:`TrajectoryAccumulator.compute`.

    Returns:
        The fraction in ``[0, 1]``; NaN when no sample was visited (nothing is known).

    Raises:
        TypeError: if ``stats`` is not a :class:`TrajectoryStatistics`.

    Example:
        >>> import numpy as np
        >>> unlearned_fraction(trajectory_statistics(np.array([[0.1], [2.0], [np.nan]])))
        0.5
        >>> unlearned_fraction(trajectory_statistics(np.array([[0.1, 0.1]]), np.array([[True, False]])))
        1.0
    """
    if not isinstance(stats, TrajectoryStatistics):
        raise TypeError(f"`stats` must be a TrajectoryStatistics, got {type(stats).__name__}")
    seen = stats.count > 0
    if not seen.any():
        return float("nan")
    if stats.learned_epoch is not None:
        return float((stats.learned_epoch[seen] < 0).mean())
    last = np.asarray(stats.last, dtype=np.float64)[seen]
    with np.errstate(invalid="ignore"):
        unlearned = (last > _LN2) | np.isnan(last)
    return float(unlearned.mean())


def top_k(scores: Any, k: int, *, tiebreak: Any = None) -> NDArray[np.int64]:
    """Indices of the ``k`` highest scores, highest first, NaN last.

    Args:
        scores: shape ``[N]``; NaN marks a sample without a score.
        k: how many indices to return (>= 0); more than ``N`` returns all ``N``.
        tiebreak: optional ``[N]`` secondary key, higher first, among equal scores.
            Remaining ties keep index order.

    Returns:
        int64 array of at most ``k`` indices.

    Raises:
        ValueError: if ``k < 0``, ``scores`` is not 1-D, or ``tiebreak`` has another shape.
        TypeError: if ``k`` is not an int.

    Example:
        >>> import numpy as np
        >>> top_k(np.array([0.5, np.nan, 2.0, 0.5]), 3, tiebreak=np.array([0.1, 0.0, 0.0, 0.9]))
        array([2, 3, 0])
    """
    k = check_int("k", k, minimum=0, hint="pass how many indices to return")
    values = check_float_array(scores, "scores", allow_nan=True, allow_inf=True, allow_empty=True)
    missing = np.isnan(values)
    keys = [np.where(missing, 0.0, -values)]
    if tiebreak is not None:
        secondary = check_float_array(tiebreak, "tiebreak", allow_nan=True, allow_inf=True, allow_empty=True)
        if secondary.shape != values.shape:
            raise ValueError(
                f"`tiebreak` must have the shape of `scores` {values.shape}, got {secondary.shape}"
            )
        keys.insert(0, np.where(np.isnan(secondary), np.inf, -secondary))
    candidates = None
    if 0 < k < values.size // 4:  # only the k best matter: partition first, sort the few (ties kept)
        key = np.where(missing, -np.inf, values)
        kth = np.partition(key, values.size - k)[values.size - k]
        candidates = np.flatnonzero(key >= kth)
        keys = [c[candidates] for c in keys]
        missing = missing[candidates]
    # np.lexsort sorts by the last key first and is stable
    order = np.lexsort((*keys, missing))
    if candidates is not None:
        order = candidates[order]
    return order[: int(k)].astype(np.int64)
