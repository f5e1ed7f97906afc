"""LossTrajectoryTracker on real Trainers: step and probe sources, what is logged and written, bad input."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from helpers.data import loaders, make_blobs
from helpers.models import FaultyClassifier, NoCorrectClassifier, TinyClassifier, per_sample_losses
from helpers.training import trainer
from memcallbacks import LossTrajectoryTracker
from memcallbacks.metrics import memorisation_score, top_k, trajectory_statistics
from memcallbacks.utilities.fileio import load_json, load_npz


def _csv_rows(tr: Any) -> list[dict[str, str]]:
    with open(Path(tr.logger.log_dir) / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r.get("mem/traj/loss_mean")]


def _forgetting_by_hand(correct: np.ndarray) -> np.ndarray:
    return ((correct[:, :-1]) & ~correct[:, 1:]).sum(axis=1)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_step_losses_are_the_unscaled_per_sample_losses(tmp_path: Path, accumulate: int) -> None:
    """lr=0: every visit-time loss equals the model's own per-sample CE (index mapping, no loss scaling)."""
    ds = make_blobs(50)
    model = TinyClassifier(lr=0.0)
    expected = per_sample_losses(model, *ds.tensors)
    tracker = LossTrajectoryTracker()
    tr = trainer(tmp_path, max_epochs=2, callbacks=[tracker], accumulate_grad_batches=accumulate)
    tr.fit(model, loaders(ds, batch_size=8)[0])
    m = tracker.store.matrix()
    assert m.shape == (50, 2)
    assert m.dtype == np.float16
    np.testing.assert_array_equal(m[:, 0], expected.astype(np.float16))
    np.testing.assert_array_equal(m[:, 1], expected.astype(np.float16))


def test_logged_metrics_files_and_statistics(tmp_path: Path) -> None:
    ds = make_blobs(60, seed=3)
    tracker = LossTrajectoryTracker(num_top=5)
    tr = trainer(tmp_path, max_epochs=4, callbacks=[tracker])
    tr.fit(TinyClassifier(lr=0.5), loaders(ds, batch_size=16)[0])

    m, c = tracker.store.matrix().astype(np.float64), tracker.store.correct_matrix()
    assert m.shape == (60, 4)
    assert not np.isnan(m).any()
    stats = tracker.statistics()
    ref = trajectory_statistics(m, c)
    np.testing.assert_array_equal(stats.mean, ref.mean)
    np.testing.assert_array_equal(stats.forgetting_events, _forgetting_by_hand(c))

    rows = _csv_rows(tr)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    last = {k: float(v) for k, v in rows[-1].items() if v}
    assert last["mem/traj/loss_mean"] == pytest.approx(m[:, 3].mean(), rel=1e-3)  # unrounded vs float16
    assert last["mem/traj/loss_std_mean"] == pytest.approx(m.std(axis=1).mean(), rel=1e-5)
    assert last["mem/traj/forgetting_mean"] == pytest.approx(_forgetting_by_hand(c).mean())
    assert last["mem/traj/correct_frac"] == pytest.approx(c[:, 3].mean())
    learned_to_end = c[:, ::-1].cumprod(axis=1).sum(axis=1) > 0  # correct at the last visit (and a streak)
    assert last["mem/traj/unlearned_frac"] == pytest.approx(1 - learned_to_end.mean())
    assert last["mem/traj/visited_frac"] == 1.0
    assert last["mem/traj/nonfinite"] == 0.0
    assert last["mem/traj/epochs"] == 4.0
    assert last["mem/traj/score_max"] == pytest.approx(m.mean(axis=1).max(), rel=1e-6)

    run = tracker.run_dir
    assert run == Path(tr.log_dir) / "memcallbacks" / "trajectory"
    assert sorted(p.name for p in run.glob("epoch_*.npy")) == [f"epoch_000{j}.npy" for j in range(4)]
    saved = load_npz(run / "statistics.npz")
    np.testing.assert_array_equal(saved["score"], memorisation_score(stats))
    np.testing.assert_array_equal(saved["learned_epoch"], stats.learned_epoch)
    meta = load_json(run / "meta.json")
    assert meta["epochs"] == [0, 1, 2, 3]
    assert meta["dtype"] == "float16"
    assert meta["has_correct"]

    # most_memorised: top-k of the memorisation score (mean loss), ties by variability
    top = tracker.most_memorised(5)
    np.testing.assert_array_equal(top, top_k(m.mean(axis=1), 5, tiebreak=stats.variability))
    assert m.mean(axis=1)[top[0]] == m.mean(axis=1).max()


def test_without_correctness_unlearned_uses_gold_probability(tmp_path: Path) -> None:
    tracker = LossTrajectoryTracker(dtype="float32")
    tr = trainer(tmp_path, max_epochs=2, callbacks=[tracker])
    tr.fit(NoCorrectClassifier(lr=0.05), loaders(make_blobs(40), batch_size=8)[0])
    m = tracker.store.matrix()
    assert m.dtype == np.float32
    assert tracker.store.correct_matrix() is None
    last = _csv_rows(tr)[-1]
    assert "mem/traj/forgetting_mean" not in last or last["mem/traj/forgetting_mean"] == ""
    assert float(last["mem/traj/unlearned_frac"]) == pytest.approx((np.exp(-m[:, -1]) < 0.5).mean())


def test_probe_mode_random_subset_and_given_dataset(tmp_path: Path) -> None:
    ds = make_blobs(80)
    held_out = make_blobs(12, seed=9)
    subset = LossTrajectoryTracker(source="probe", num_probes=25, seed=3, name="members", every_n_epochs=2)
    given = LossTrajectoryTracker(source="probe", probe_dataset=held_out, name="heldout")
    model = TinyClassifier(lr=0.3)
    tr = trainer(tmp_path, max_epochs=4, callbacks=[subset, given])
    tr.fit(model, loaders(ds, batch_size=16)[0])
    ids = subset.sample_ids
    assert ids.shape == (25,)
    assert np.all(np.diff(ids) > 0)
    np.testing.assert_array_equal(ids, np.sort(np.random.default_rng(3).choice(80, 25, replace=False)))
    assert subset.recorded_epochs == [1, 3]
    assert given.recorded_epochs == [0, 1, 2, 3]
    # the last probe column is the final model's eval-mode loss on those samples
    x, y = ds.tensors
    np.testing.assert_allclose(
        subset.store.epoch(-1), per_sample_losses(model, x[ids], y[ids]).astype(np.float16), rtol=1e-3
    )
    np.testing.assert_allclose(
        given.store.epoch(-1), per_sample_losses(model, *held_out.tensors).astype(np.float16), rtol=1e-3
    )
    with open(Path(tr.logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("mem/traj/loss_mean/members")]
    assert [int(r["epoch"]) for r in rows] == [1, 3]
    assert (subset.run_dir.name, given.run_dir.name) == ("trajectory_members", "trajectory_heldout")
    assert set(subset.most_memorised(3)) <= set(ids.tolist())


def test_nonfinite_losses_counted_logged_stored_as_nan(tmp_path: Path) -> None:
    tracker = LossTrajectoryTracker()
    tr = trainer(tmp_path, max_epochs=2, callbacks=[tracker])
    with pytest.warns(UserWarning, match="2 sample loss"):
        tr.fit(FaultyClassifier("nonfinite"), loaders(make_blobs(30), batch_size=8, shuffle=False)[0])
    m = tracker.store.matrix()
    assert np.isnan(m[:2]).all()
    assert not np.isnan(m[2:]).any()
    for row in _csv_rows(tr):
        assert float(row["mem/traj/nonfinite"]) == 2.0
        assert float(row["mem/traj/visited_frac"]) == pytest.approx(
            28 / 30
        )  # visited = a finite loss arrived
        assert np.isfinite(float(row["mem/traj/loss_mean"]))
    assert tracker.statistics().count.tolist() == [0, 0] + [2] * 28


MISSING = r'(?s)split_index\(batch\).*reduction="none"\).*"sample_loss": per_sample.detach\(\), "sample_index": index'


@pytest.mark.parametrize(
    ("fault", "error", "match"),
    [
        ("no_keys", RuntimeError, MISSING),
        ("tensor_only", RuntimeError, MISSING),
        ("short_index", ValueError, r"must both have shape \[B\]"),
        ("float_index", TypeError, "integer tensor of sample indices, got dtype torch.float32"),
        ("negative_index", ValueError, "must be >= 0, got -1"),
        ("scalar_loss", ValueError, "shape"),
    ],
)
def test_bad_training_step_outputs(tmp_path: Path, fault: str, error: type, match: str) -> None:
    tr = trainer(tmp_path, max_epochs=1, callbacks=[LossTrajectoryTracker()])
    with pytest.raises(error, match=match):
        tr.fit(FaultyClassifier(fault), loaders(make_blobs(20), batch_size=8)[0])


def test_index_beyond_num_samples(tmp_path: Path) -> None:
    tr = trainer(tmp_path, max_epochs=1, callbacks=[LossTrajectoryTracker(num_samples=10)])
    with pytest.raises(ValueError, match=r"sample index 19 .* >= num_samples=10"):
        tr.fit(TinyClassifier(), loaders(make_blobs(20), batch_size=8)[0])


class IndexedStream(IterableDataset):
    def __init__(self, ds: TensorDataset) -> None:
        self.ds = ds

    def __iter__(self):
        for i in range(len(self.ds)):
            yield i, self.ds[i]


def test_iterable_dataset_needs_num_samples(tmp_path: Path) -> None:
    ds = make_blobs(20)
    tr = trainer(tmp_path, max_epochs=1, callbacks=[LossTrajectoryTracker()])
    with pytest.raises(ValueError, match="no length. Pass `num_samples=`"):
        tr.fit(TinyClassifier(), DataLoader(IndexedStream(ds), batch_size=8))
    tracker = LossTrajectoryTracker(num_samples=20)
    trainer(tmp_path, max_epochs=1, callbacks=[tracker]).fit(
        TinyClassifier(), DataLoader(IndexedStream(ds), batch_size=8)
    )
    assert tracker.store.statistics().count.tolist() == [1] * 20


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has 0 samples"):
        LossTrajectoryTracker(
            source="probe", probe_dataset=TensorDataset(torch.zeros(0, 8), torch.zeros(0).long())
        )
    with pytest.raises(ValueError, match="`loss_key` must not be 'loss'"):
        LossTrajectoryTracker(loss_key="loss")
    with pytest.raises(ValueError, match="`source` can be .step., .probe., got .eval."):
        LossTrajectoryTracker(source="eval")
    with pytest.raises(ValueError, match="source='probe'"):
        LossTrajectoryTracker(probe_dataset=make_blobs(4))

    # two trackers without distinct names share a state key: Lightning refuses them at Trainer creation
    def fit_two_unnamed() -> None:
        tr = trainer(
            tmp_path, max_epochs=1, callbacks=[LossTrajectoryTracker(), LossTrajectoryTracker(source="probe")]
        )
        tr.fit(TinyClassifier(), loaders(make_blobs(20))[0])

    with pytest.raises(ValueError, match="two LossTrajectoryTracker callbacks without `name=`"):
        fit_two_unnamed()
    with pytest.raises(TypeError, match="map-style dataset with a length, got IndexedStream"):
        LossTrajectoryTracker(source="probe", probe_dataset=IndexedStream(make_blobs(4)))
    with pytest.raises(ValueError, match="`num_top` must be"):
        LossTrajectoryTracker(num_top=-1)
