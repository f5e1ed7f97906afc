"""Tests for memcallbacks.metrics.dynamics (Toneva et al. 2019; Swayamdipta et al. 2020)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch

from memcallbacks.metrics import (
    TrajectoryAccumulator,
    TrajectoryStatistics,
    memorisation_score,
    top_k,
    trajectory_statistics,
    unlearned_fraction,
    zlib_entropy,
)

NAN = np.nan


def _reference(losses: np.ndarray) -> dict[str, np.ndarray]:
    """Independent numpy computation (np.nanmean / np.nanstd) of the loss statistics."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        prob = np.exp(-losses)
        return {
            "count": np.sum(~np.isnan(losses), axis=1),
            "mean": np.nanmean(losses, axis=1),
            "std": np.nanstd(losses, axis=1),  # ddof=0
            "min": np.nanmin(losses, axis=1),
            "confidence": np.nanmean(prob, axis=1),
            "variability": np.nanstd(prob, axis=1),
        }


def test_hand_worked_losses() -> None:
    # row 0: 1, 3 -> mean 2, std sqrt(((1-2)^2 + (3-2)^2) / 2) = 1, last 3, min 1
    # row 1: 2, NaN, 2 -> mean 2, std 0, last 2 (last *visited*), min 2
    losses = np.array([[1.0, 3.0, NAN], [2.0, NAN, 2.0]])
    stats = trajectory_statistics(losses)
    np.testing.assert_array_equal(stats.count, [2, 2])
    np.testing.assert_allclose(stats.mean, [2.0, 2.0])
    np.testing.assert_allclose(stats.std, [1.0, 0.0])
    np.testing.assert_array_equal(stats.last, [3.0, 2.0])
    np.testing.assert_array_equal(stats.min, [1.0, 2.0])
    # confidence: (e^-1 + e^-3) / 2 = 0.2088; variability: |e^-1 - e^-3| / 2 = 0.1590
    np.testing.assert_allclose(stats.confidence[0], (np.exp(-1) + np.exp(-3)) / 2)
    np.testing.assert_allclose(stats.variability[0], (np.exp(-1) - np.exp(-3)) / 2)
    np.testing.assert_allclose(stats.variability[1], 0.0, atol=1e-17)
    assert stats.correctness is None
    assert stats.forgetting_events is None
    assert stats.learned_epoch is None


def test_forgetting_events_with_nan_gaps() -> None:
    # epochs:        0      1      2      3      4      5
    # sample 0:      T      F      T      F      T      T    -> forgets at 1 and 3: 2 events; learned 4
    # sample 1:      T     (NaN)   F     (NaN)   T    (NaN)  -> T->F across a gap: 1 event; learned 4
    # sample 2:      F      F      F      F      F      F    -> never learned: 0 events, learned -1
    # sample 3:      F      T      T      T      T      F    -> forgotten at the end: 1 event, -1
    # sample 4:     (NaN)   T    (NaN)    T    (NaN)    T    -> learned at 1, no events
    # sample 5:     (all NaN)                               -> count 0
    correct = np.array(
        [
            [1, 0, 1, 0, 1, 1],
            [1, 1, 0, 0, 1, 0],  # values at NaN epochs are ignored
            [0, 0, 0, 0, 0, 0],
            [0, 1, 1, 1, 1, 0],
            [0, 1, 1, 1, 0, 1],
            [1, 1, 1, 1, 1, 1],
        ],
        dtype=bool,
    )
    losses = np.ones((6, 6)) * 0.5
    losses[1, [1, 3, 5]] = NAN
    losses[4, [0, 2, 4]] = NAN
    losses[5] = NAN
    stats = trajectory_statistics(losses, correct)
    np.testing.assert_array_equal(stats.forgetting_events, [2, 1, 0, 1, 0, 0])
    np.testing.assert_array_equal(stats.learned_epoch, [4, 4, -1, -1, 1, -1])
    np.testing.assert_array_equal(stats.count, [6, 3, 6, 6, 3, 0])
    # correctness over visits: 4/6, 2/3 (T F T), 0, 4/6, 1, NaN
    np.testing.assert_allclose(stats.correctness, [4 / 6, 2 / 3, 0.0, 4 / 6, 1.0, NAN])
    assert stats.forgetting_events is not None
    assert stats.forgetting_events.dtype == np.int64


def test_all_nan_rows_give_nan_statistics_without_warnings() -> None:
    losses = np.full((3, 4), NAN)
    losses[1, 2] = 0.7
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning ("Mean of empty slice") would fail
        stats = trajectory_statistics(losses, np.zeros((3, 4), dtype=bool))
    np.testing.assert_array_equal(stats.count, [0, 1, 0])
    for name in ("mean", "std", "last", "min", "confidence", "variability", "correctness"):
        values = getattr(stats, name)
        assert np.isnan(values[[0, 2]]).all(), name
        assert not np.isnan(values[1]), name
    np.testing.assert_array_equal(stats.forgetting_events, [0, 0, 0])
    np.testing.assert_array_equal(stats.learned_epoch, [-1, -1, -1])


@pytest.mark.parametrize("seed", range(3))
def test_matches_independent_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    losses = rng.gamma(1.5, 1.0, size=(300, 12))
    losses[rng.random(losses.shape) < 0.3] = NAN
    losses[:5] = NAN
    stats = trajectory_statistics(losses)
    reference = _reference(losses)
    np.testing.assert_array_equal(stats.count, reference["count"])
    for name in ("mean", "std", "min", "confidence", "variability"):
        np.testing.assert_allclose(getattr(stats, name), reference[name], rtol=1e-10, atol=1e-12)
    # last visited loss
    last = np.array([row[~np.isnan(row)][-1] if (~np.isnan(row)).any() else NAN for row in losses])
    np.testing.assert_array_equal(stats.last, last)


def test_forgetting_matches_brute_force() -> None:
    rng = np.random.default_rng(11)
    losses = rng.random((200, 10))
    losses[rng.random(losses.shape) < 0.25] = NAN
    correct = rng.random((200, 10)) < 0.6
    stats = trajectory_statistics(losses, correct)
    for i in range(200):
        visits = correct[i][~np.isnan(losses[i])]
        epochs = np.flatnonzero(~np.isnan(losses[i]))
        events = int(np.sum(visits[:-1] & ~visits[1:]))
        learned = -1
        if len(visits) and visits[-1]:
            start = len(visits) - 1
            while start > 0 and visits[start - 1]:
                start -= 1
            learned = int(epochs[start])
        assert stats.forgetting_events[i] == events  # type: ignore[index]
        assert stats.learned_epoch[i] == learned  # type: ignore[index]


def test_streaming_equals_batch_and_state_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(5)
    losses = rng.random((50, 8)).astype(np.float16)
    losses[rng.random(losses.shape) < 0.2] = NAN
    correct = rng.random((50, 8)) < 0.5
    batch = trajectory_statistics(torch.tensor(losses), torch.tensor(correct))

    first = TrajectoryAccumulator(50)
    for epoch in range(4):
        first.update(torch.tensor(losses[:, epoch]), torch.tensor(correct[:, epoch]))
    # a checkpoint through np.savez and torch.save(weights_only load), then resume
    state = first.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    np.savez(tmp_path / "acc.npz", **state)
    loaded = dict(np.load(tmp_path / "acc.npz"))
    torch.save({k: torch.from_numpy(v) for k, v in loaded.items()}, tmp_path / "acc.pt")
    resumed = TrajectoryAccumulator(50)
    resumed.load_state_dict(torch.load(tmp_path / "acc.pt", weights_only=True))
    for epoch in range(4, 8):
        resumed.update(losses[:, epoch], correct[:, epoch].astype(np.int64))
        first.update(losses[:, epoch], correct[:, epoch])
    for stats in (resumed.compute(), first.compute()):
        for name in ("count", "mean", "std", "last", "min", "confidence", "variability"):
            np.testing.assert_array_equal(getattr(stats, name), getattr(batch, name), err_msg=name)
        for name in ("correctness", "forgetting_events", "learned_epoch"):
            np.testing.assert_array_equal(getattr(stats, name), getattr(batch, name), err_msg=name)
    assert resumed.num_epochs == 8
    # the state is a copy: later updates do not change it
    assert state["count"].sum() == np.sum(~np.isnan(losses[:, :4]))


def test_load_state_dict_mismatch() -> None:
    state = TrajectoryAccumulator(3).state_dict()
    with pytest.raises(ValueError, match="`state_dict` is for 3 samples, this accumulator has 4"):
        TrajectoryAccumulator(4).load_state_dict(state)
    del state["loss_m2"]
    with pytest.raises(ValueError, match="lacks keys.*loss_m2"):
        TrajectoryAccumulator(3).load_state_dict(state)


def test_accumulator_bad_input() -> None:
    acc = TrajectoryAccumulator(3)
    with pytest.raises(ValueError, match=r"`epoch_losses` must have shape \(3,\), got \(2,\)"):
        acc.update([0.1, 0.2])
    with pytest.raises(ValueError, match=r"`epoch_losses` must be 1-D, got shape \(3, 1\)"):
        acc.update(np.ones((3, 1)))
    with pytest.raises(ValueError, match="`epoch_losses` must be finite or NaN, got inf"):
        acc.update([0.1, np.inf, NAN])
    with pytest.raises(ValueError, match=r"`epoch_correct` must have shape \(3,\)"):
        acc.update([0.1, 0.2, 0.3], [True, False])
    with pytest.raises(ValueError, match="`epoch_correct` must be bool or 0/1, got 2"):
        acc.update([0.1, 0.2, 0.3], [1, 2, 0])
    acc.update([0.1, 0.2, 0.3], [True, False, True])
    with pytest.raises(ValueError, match="`epoch_correct` was given at earlier updates but is None now"):
        acc.update([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="`num_samples` must be an integer >= 0, got -1"):
        TrajectoryAccumulator(-1)
    with pytest.raises(TypeError, match="`num_samples` must be an integer >= 0"):
        TrajectoryAccumulator(3.0)  # type: ignore[arg-type]


def test_trajectory_statistics_bad_input() -> None:
    with pytest.raises(ValueError, match=r"`losses` must be 2-D, got shape \(3,\)"):
        trajectory_statistics(np.ones(3))
    with pytest.raises(ValueError, match=r"`correct` must have the shape of `losses` \(2, 3\), got \(3, 2\)"):
        trajectory_statistics(np.ones((2, 3)), np.ones((3, 2), dtype=bool))


def test_zero_epochs_and_zero_samples() -> None:
    stats = trajectory_statistics(np.empty((4, 0)), np.empty((4, 0), dtype=bool))
    np.testing.assert_array_equal(stats.count, [0, 0, 0, 0])
    assert np.isnan(stats.mean).all()
    assert stats.learned_epoch is not None
    assert trajectory_statistics(np.empty((0, 3))).num_samples == 0


# ---------------------------------------------------------------- score and ranking
def test_memorisation_score_is_mean_loss() -> None:
    # sample 0: (2.0 + 0.1) / 2 = 1.05 (fitted late, memorised); sample 1: (0.3 + 0.1) / 2 = 0.2
    stats = trajectory_statistics(np.array([[2.0, 0.1], [0.3, 0.1], [NAN, NAN]]))
    score = memorisation_score(stats)
    np.testing.assert_allclose(score, [1.05, 0.2, NAN])
    score[0] = 99.0  # a copy
    assert stats.mean[0] == 1.05
    with pytest.raises(TypeError, match="`stats` must be a TrajectoryStatistics"):
        memorisation_score(np.ones(3))  # type: ignore[arg-type]


def test_memorisation_score_ranks_flipped_labels_first() -> None:
    # a sample whose loss stays high until late outranks one fitted at once
    rng = np.random.default_rng(0)
    epochs = np.arange(10)
    clean = np.exp(-epochs)[None, :] * rng.uniform(0.5, 1.0, (90, 1))
    flipped = np.where(epochs < 7, 3.0, 0.1)[None, :] * rng.uniform(0.8, 1.2, (10, 1))
    stats = trajectory_statistics(np.vstack([clean, flipped]))
    assert set(top_k(memorisation_score(stats), 10).tolist()) == set(range(90, 100))
    assert isinstance(stats, TrajectoryStatistics)


def test_top_k_order_nan_last_and_tiebreak() -> None:
    scores = np.array([0.5, NAN, 2.0, 0.5, 1.0])
    # highest first; NaN last; equal scores in index order
    np.testing.assert_array_equal(top_k(scores, 5), [2, 4, 0, 3, 1])
    # tie between 0 and 3 broken by the secondary key, higher first
    np.testing.assert_array_equal(top_k(scores, 4, tiebreak=[0.1, 0.0, 0.0, 0.9, 0.0]), [2, 4, 3, 0])
    np.testing.assert_array_equal(top_k(torch.tensor(scores), 2), [2, 4])
    assert top_k(scores, 0).tolist() == []
    assert len(top_k(scores, 100)) == 5
    assert top_k(np.array([np.inf, 1.0, -np.inf]), 3).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="`k` must be an integer >= 0, got -1"):
        top_k(scores, -1)
    with pytest.raises(TypeError, match="`k` must be an integer >= 0"):
        top_k(scores, 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`tiebreak` must have the shape of `scores`"):
        top_k(scores, 2, tiebreak=[1.0])
    with pytest.raises(ValueError, match="`scores` must be 1-D"):
        top_k(np.ones((2, 2)), 1)


def test_memorisation_scores_by_hand() -> None:
    losses = np.array([[2.0, 0.5, 1.0], [np.nan, 3.0, 2.5], [np.nan] * 3, [1.0, np.nan, 0.2]])
    stats = trajectory_statistics(losses)
    np.testing.assert_array_equal(stats.first, [2.0, 3.0, np.nan, 1.0])
    np.testing.assert_allclose(memorisation_score(stats), [3.5 / 3, 2.75, np.nan, 0.6])
    np.testing.assert_allclose(memorisation_score(stats, by="mean_loss"), memorisation_score(stats))
    np.testing.assert_allclose(memorisation_score(stats, by="min_loss"), [-0.5, -2.5, np.nan, -0.2])
    np.testing.assert_allclose(memorisation_score(stats, by="low_loss"), [-1.0, -2.5, np.nan, -0.2])
    np.testing.assert_allclose(memorisation_score(stats, by="loss_drop"), [1.0, 0.5, np.nan, 0.8])
    assert top_k(memorisation_score(stats, by="min_loss"), 4).tolist() == [3, 0, 1, 2]  # unvisited last
    with pytest.raises(
        ValueError,
        match="`by` can be 'mean_loss', 'min_loss', 'low_loss', 'loss_drop', 'calibrated_loss', got 'x'",
    ):
        memorisation_score(stats, by="x")
    legacy = TrajectoryStatistics(**{**stats.__dict__, "first": None})
    with pytest.raises(ValueError, match="first-visit loss"):
        memorisation_score(legacy, by="loss_drop")


def test_calibrated_loss_by_hand() -> None:
    """reference - min: the per-token log-likelihood ratio against the reference (Watson et al. 2022)."""
    losses = np.array([[2.0, 0.5, 1.0], [np.nan, 3.0, 2.5], [np.nan] * 3, [1.0, np.nan, 0.2]])
    stats = trajectory_statistics(losses)
    reference = [0.9, 4.0, 1.0, np.nan]
    score = memorisation_score(stats, by="calibrated_loss", reference=reference)
    # 0.9 - 0.5, 4.0 - 2.5, never visited, no reference
    np.testing.assert_allclose(score, [0.4, 1.5, np.nan, np.nan])
    assert top_k(score, 4).tolist() == [1, 0, 2, 3]  # the NaNs last
    # the other scores ignore the reference
    np.testing.assert_array_equal(
        memorisation_score(stats, by="min_loss", reference=reference),
        memorisation_score(stats, by="min_loss"),
    )
    with pytest.raises(ValueError, match="needs `reference=`"):
        memorisation_score(stats, by="calibrated_loss")
    with pytest.raises(ValueError, match=r"one loss per sample \(4\), got shape \(3,\)"):
        memorisation_score(stats, by="calibrated_loss", reference=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="`reference` must be finite"):
        memorisation_score(stats, by="calibrated_loss", reference=[1.0, np.inf, 1.0, 1.0])
    with pytest.raises(TypeError, match="`reference` must hold real numbers"):
        memorisation_score(stats, by="calibrated_loss", reference=["a", "b", "c", "d"])


def test_zlib_entropy_by_hand() -> None:
    """Compressed bits in nats per token: zlib level 9 writes b"hello" in 13 bytes (2 header, 7 deflate, 4 adler32)."""
    nats = 8 * np.log(2.0) * 13
    np.testing.assert_allclose(zlib_entropy(["hello"]), [nats / 5])
    np.testing.assert_allclose(zlib_entropy([b"hello", "hello"], num_tokens=[2, 13]), [nats / 2, nats / 13])
    np.testing.assert_allclose(zlib_entropy("hello"), [nats / 5])  # one text
    # a repetitive text compresses: far fewer nats per character than a short one
    assert zlib_entropy(["ab" * 200])[0] < 0.2 * zlib_entropy(["ab"])[0]
    assert zlib_entropy([]).shape == (0,)
    with pytest.raises(ValueError, match="text 1 has 0 tokens"):
        zlib_entropy(["a", ""])
    with pytest.raises(ValueError, match="text 0 has 0 tokens"):
        zlib_entropy(["a"], num_tokens=[0])
    with pytest.raises(ValueError, match=r"one count per text \(2\)"):
        zlib_entropy(["a", "b"], num_tokens=[1])
    with pytest.raises(TypeError, match=r"`texts\[1\]` must be a str or bytes, got int"):
        zlib_entropy(["a", 3])


def test_first_visit_survives_state_dict_and_older_states() -> None:
    acc = TrajectoryAccumulator(3)
    acc.update([np.nan, 2.0, 1.0])
    acc.update([4.0, 1.0, np.nan])
    state = acc.state_dict()
    again = TrajectoryAccumulator(3)
    again.load_state_dict(state)
    np.testing.assert_array_equal(again.compute().first, [4.0, 2.0, 1.0])
    old = {k: v for k, v in state.items() if k != "first"}  # saved before `first` existed
    older = TrajectoryAccumulator(3)
    older.load_state_dict(old)
    assert np.isnan(older.compute().first).all()
    np.testing.assert_array_equal(older.compute().mean, acc.compute().mean)


@pytest.mark.parametrize(
    ("losses", "correct", "expected"),
    [
        # without correctness: exp(-last) < 1/2  <=>  last > ln 2; NaN last = not learned; unvisited ignored
        ([[0.1, 0.6], [0.1, 0.7], [np.nan, np.nan], [3.0, 0.2]], None, 1 / 3),
        ([[0.1, 0.69314], [0.1, 0.69316]], None, 0.5),
        # with correctness: learned_epoch == -1 (incorrect at the last visit, or never correct)
        ([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]], [[True, True], [True, False], [False, False]], 2 / 3),
        ([[np.nan], [np.nan]], None, float("nan")),
    ],
)
def test_unlearned_fraction(losses: Any, correct: Any, expected: float) -> None:
    stats = trajectory_statistics(
        np.array(losses, dtype=float), None if correct is None else np.array(correct)
    )
    got = unlearned_fraction(stats)
    if np.isnan(expected):
        assert np.isnan(got)
    else:
        assert got == pytest.approx(expected)
