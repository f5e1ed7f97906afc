"""The language-model memorisation scores rank memorised canaries first (the mean loss does not)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl

from helpers.data import loaders, make_blobs
from helpers.models import TinyClassifier
from helpers.training import trainer
from memcallbacks import CanarySet, CharTokenizer, LossTrajectoryTracker
from memcallbacks.demos.toy import WindowLM, lm_loader, make_payment_corpus
from memcallbacks.metrics import memorisation_score, top_k
from memcallbacks.rundir import RunDirectory, RunDirectoryError
from memcallbacks.utilities.fileio import load_npz


@pytest.mark.slow
def test_min_loss_puts_canaries_inserted_16_and_32_times_in_the_top_percent(tmp_path: Path) -> None:
    """Toy payment corpus + canaries inserted 1, 4, 16, 32 times; a small window LM, 8 epochs.

    Measured when written: 98% of the 48 copies of the 16- and 32-times canaries in the top 1%
    (60 of 6,053 sequences) by ``min_loss``; 0% by the classification default ``mean_loss``.
    """
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    pl.seed_everything(0, verbose=False)
    tok = CharTokenizer()
    canaries = CanarySet("my pin is {secret}.", tok, repetitions=(1, 4, 16, 32), per_count=1, seed=0)
    data = canaries.inject(make_payment_corpus(6000, seed=0))
    tracker = LossTrajectoryTracker(correct_key=None, num_top=0, run_dir=tmp_path / "run")
    trainer(tmp_path, max_epochs=8, callbacks=[tracker], logger=False).fit(
        WindowLM(tok.vocab_size, hidden_size=128, lr=0.01), lm_loader(data, tok, batch_size=128)
    )
    copies = [i for c in canaries.canaries if c.repetitions >= 16 for i in canaries.injected_indices[c.id]]
    k = len(data) // 100

    def share_in_top(by: str) -> float:
        return float(np.isin(copies, tracker.most_memorised(k, by=by)).mean())

    assert len(copies) == 48
    assert k == 60
    assert share_in_top("min_loss") >= 0.8
    assert share_in_top("low_loss") >= 0.6
    assert share_in_top("mean_loss") <= 0.1  # the classification score points at hard text instead


def test_calibrated_loss_tracker_files_and_report_agree(tmp_path: Path) -> None:
    """``reference=``: rows, statistics.npz, most_memorised and the run directory's score all give reference - min."""
    ds = make_blobs(40, seed=1)
    reference = np.linspace(0.5, 3.0, 40)
    tracker = LossTrajectoryTracker(score="calibrated_loss", reference=reference, num_top=3)
    tr = trainer(tmp_path, max_epochs=2, callbacks=[tracker])
    tr.fit(TinyClassifier(lr=0.3), loaders(ds, batch_size=8)[0])
    m = tracker.store.matrix().astype(np.float64)
    expected = reference - m.min(axis=1)  # by hand from the stored losses
    stats = tracker.statistics()
    np.testing.assert_allclose(memorisation_score(stats, by="calibrated_loss", reference=reference), expected)
    np.testing.assert_array_equal(tracker.most_memorised(5), top_k(expected, 5, tiebreak=stats.variability))
    assert (
        tracker.most_memorised(5, by="min_loss").tolist()
        == top_k(-m.min(axis=1), 5, tiebreak=stats.variability).tolist()
    )
    saved = load_npz(tracker.run_dir / "statistics.npz")
    np.testing.assert_array_equal(saved["reference"], reference)
    traj = RunDirectory(Path(tr.log_dir) / "memcallbacks").trajectory()
    assert traj is not None
    assert traj.score_by == "calibrated_loss"
    np.testing.assert_allclose(traj.score(), expected)
    # without a reference the score cannot be read back: said, not guessed
    plain = LossTrajectoryTracker(num_top=0, run_dir=tmp_path / "plain")
    trainer(tmp_path / "p", max_epochs=1, callbacks=[plain]).fit(
        TinyClassifier(), loaders(ds, batch_size=8)[0]
    )
    with pytest.raises(ValueError, match="needs `reference=`"):
        plain.most_memorised(3, by="calibrated_loss")
    with pytest.raises(RunDirectoryError, match=r"lacks the array\(s\) \['reference'\]"):
        RunDirectory(tmp_path / "plain").trajectory().score("calibrated_loss")  # type: ignore[union-attr]


def test_calibrated_loss_probe_rows_take_the_reference_of_their_dataset_index(tmp_path: Path) -> None:
    ds = make_blobs(50, seed=2)
    reference = np.arange(50, dtype=np.float64)
    tracker = LossTrajectoryTracker(
        source="probe", num_probes=10, score="calibrated_loss", reference=reference, num_top=0
    )
    trainer(tmp_path, max_epochs=1, callbacks=[tracker]).fit(TinyClassifier(), loaders(ds, batch_size=8)[0])
    ids = tracker.sample_ids
    saved = load_npz(tracker.run_dir / "statistics.npz")
    np.testing.assert_array_equal(saved["reference"], reference[ids])
    assert tracker.most_memorised(1)[0] == ids[np.argmax(reference[ids] - tracker.store.matrix()[:, 0])]


def test_calibrated_loss_bad_reference(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="`score='calibrated_loss'` needs `reference=`"):
        LossTrajectoryTracker(score="calibrated_loss")
    with pytest.raises(ValueError, match="`reference` must be finite"):
        LossTrajectoryTracker(score="calibrated_loss", reference=[1.0, np.inf])
    with pytest.raises(ValueError, match="`reference` must be 1-D"):
        LossTrajectoryTracker(reference=np.ones((2, 2)))
    with pytest.raises(TypeError, match="`reference` must hold real numbers"):
        LossTrajectoryTracker(reference=["a"])
    tracker = LossTrajectoryTracker(score="calibrated_loss", reference=np.ones(7))
    with pytest.raises(ValueError, match="`reference` holds 7 losses but the tracker records 20 samples"):
        trainer(tmp_path, max_epochs=1, callbacks=[tracker]).fit(
            TinyClassifier(), loaders(make_blobs(20), batch_size=8)[0]
        )


@pytest.mark.slow
def test_demo_defaults_rank_canaries_inserted_16_and_32_times_in_the_top_percent(tmp_path: Path) -> None:
    """The issue's target, at the demo's defaults (``memcallbacks demo``: early stopping at 18 bits).

    Measured when written: the run stops after epoch 1; 94 of the 96 copies (98%) rank in the top
    1% (103 of 10,242 samples) by ``calibrated_loss`` (zlib reference), 18 (19%) by ``min_loss``.
    """
    from memcallbacks.demos.demo import run_demo
    from memcallbacks.report import canary_copies_ranked
    from memcallbacks.rundir import RunDirectory as Run

    result = run_demo(out=tmp_path / "demo", loggers=("csv",), stop_bits=18.0, report=False)
    top1 = result["canary_top1"]
    assert top1["by"] == "calibrated_loss"
    assert top1["copies"] == 96
    assert top1["top_size"] == 103
    assert top1["share"] >= 0.8
    run = Run(result["run_dir"])
    traj, exp = run.trajectory(), run.exposure()
    assert traj is not None
    assert exp is not None
    uncalibrated = canary_copies_ranked(traj, exp, by="min_loss")
    assert uncalibrated is not None
    assert uncalibrated.share < top1["share"]
