"""LossTrajectoryTracker(reference="fit_start" | "peft_base" | module) and score_max following ``score=``."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.data import loaders, make_blobs
from helpers.models import TinyClassifier, dataset_losses
from helpers.reference_resume import check_resume_keeps_the_stored_reference
from helpers.training import fit_with_epoch_checkpoints, trainer
from memcallbacks import LossTrajectoryTracker
from memcallbacks.utilities.fileio import load_npz

TRAIN = make_blobs(40, seed=0)


def _tracker(reference: object, **kwargs: object) -> LossTrajectoryTracker:
    return LossTrajectoryTracker(
        source="probe",
        probe_dataset=TRAIN,
        score="calibrated_loss",
        reference=reference,
        dtype="float32",
        num_top=0,
        **kwargs,  # type: ignore[arg-type]
    )


def test_fit_start_reference_is_the_probes_before_the_first_step(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyClassifier(hidden=8, lr=0.3)
    at_start = copy.deepcopy(model)
    tracker = _tracker("fit_start")
    trainer(tmp_path, max_epochs=3, callbacks=[tracker]).fit(model, loaders(TRAIN)[0])

    reference = dataset_losses(at_start, TRAIN)
    assert tracker._fit_reference is not None
    np.testing.assert_allclose(tracker._fit_reference, reference, rtol=1e-5, atol=1e-6)
    # calibrated_loss = fit-start loss - lowest loss reached; score_max is its maximum, by hand
    m = tracker.store.matrix().astype(np.float64)
    expected = tracker._fit_reference.astype(np.float64) - m.min(axis=1)
    np.testing.assert_array_equal(tracker.most_memorised(40)[:5], np.argsort(-expected, kind="stable")[:5])
    assert tracker.history[-1]["mem/traj/score_max"] == pytest.approx(expected.max(), rel=1e-6)
    # the reference is not the first recorded evaluation (after one epoch): that one is `first`
    assert not np.allclose(m[:, 0], reference, atol=1e-3)
    saved = load_npz(tracker.run_dir / "statistics.npz")
    np.testing.assert_array_equal(saved["reference"], tracker._fit_reference.astype(np.float64))
    meta = json.loads((tracker.run_dir / "meta.json").read_text())
    assert meta["reference"] == "fit_start"
    assert meta["score_by"] == "calibrated_loss"


def _resumable(
    tmp: Path, max_epochs: int, reference: object, ckpt_path: str | None = None
) -> LossTrajectoryTracker:
    torch.manual_seed(0)
    tracker = _tracker(reference)
    model = TinyClassifier(hidden=8, lr=0.3)
    fit_with_epoch_checkpoints(
        tmp, max_epochs, tracker, model, loaders(TRAIN, shuffle=False)[0], ckpt_path=ckpt_path
    )
    return tracker


@pytest.mark.parametrize("kind", ["fit_start", "module"])
def test_resume_keeps_the_stored_reference(tmp_path: Path, kind: str) -> None:
    check_resume_keeps_the_stored_reference(tmp_path, kind, _resumable, lambda cb: cb._fit_reference, TRAIN)


def test_resume_without_stored_reference_is_refused(tmp_path: Path) -> None:
    plain = LossTrajectoryTracker(source="probe", probe_dataset=TRAIN, num_top=0, dtype="float32")
    fit_with_epoch_checkpoints(tmp_path, 1, plain, TinyClassifier(), loaders(TRAIN)[0])
    with pytest.raises(ValueError, match="holds no reference losses evaluated at fit start"):
        trainer(tmp_path, max_epochs=2, callbacks=[_tracker("fit_start")]).fit(
            TinyClassifier(), loaders(TRAIN)[0], ckpt_path=str(tmp_path / "ckpt" / "epoch=0.ckpt")
        )


def test_reference_with_another_vocabulary_is_refused_before_training(tmp_path: Path) -> None:
    model = TinyClassifier()
    with pytest.raises(ValueError, match=r"LossTrajectoryTracker\(reference=TinyClassifier\).*5 entries"):
        trainer(tmp_path, max_epochs=1, callbacks=[_tracker(TinyClassifier(classes=5))]).fit(
            model, loaders(TRAIN)[0]
        )
    assert model.global_step == 0


def test_reference_that_cannot_run_the_probes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot score the probes"):
        trainer(tmp_path, max_epochs=1, callbacks=[_tracker(torch.nn.Linear(4, 3))]).fit(
            TinyClassifier(), loaders(TRAIN)[0]
        )


def test_peft_base_without_adapters_is_refused_before_training(tmp_path: Path) -> None:
    model = TinyClassifier()
    with pytest.raises(ValueError, match="without peft adapters|no Hugging Face model"):
        trainer(tmp_path, max_epochs=1, callbacks=[_tracker("peft_base")]).fit(model, loaders(TRAIN)[0])
    assert model.global_step == 0


@pytest.mark.parametrize("reference", ["fit_start", "peft_base"])
def test_model_reference_needs_the_probe_source(reference: str) -> None:
    with pytest.raises(ValueError, match="source='probe'.*pass them as an array"):
        LossTrajectoryTracker(score="calibrated_loss", reference=reference)


@pytest.mark.parametrize(("value", "error"), [("start", ValueError), ({"a": 1}, TypeError)])
def test_bad_reference_argument(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="`reference`"):
        LossTrajectoryTracker(source="probe", reference=value)


def test_calibrated_loss_without_reference_names_fit_start() -> None:
    with pytest.raises(ValueError, match="reference='fit_start'"):
        LossTrajectoryTracker(source="probe", score="calibrated_loss")


def _by_hand(m: np.ndarray, by: str, reference: np.ndarray) -> np.ndarray:
    """Each score from the stored ``[N, E]`` losses (every sample visited every epoch here)."""
    return {
        "mean_loss": m.mean(axis=1),
        "min_loss": -m.min(axis=1),
        "low_loss": -m[:, -1],
        "loss_drop": m[:, 0] - m[:, -1],
        "calibrated_loss": reference - m.min(axis=1),
    }[by]


@pytest.mark.parametrize("by", ["mean_loss", "min_loss", "low_loss", "loss_drop", "calibrated_loss"])
def test_score_max_follows_score(tmp_path: Path, by: str) -> None:
    """``mem/traj/score_max`` is the largest score by ``score=``, not the largest mean loss whatever it ranks by."""
    reference = np.linspace(0.5, 3.0, 40)
    tracker = LossTrajectoryTracker(score=by, reference=reference, dtype="float32", num_top=0)
    torch.manual_seed(0)
    trainer(tmp_path, max_epochs=3, callbacks=[tracker]).fit(TinyClassifier(lr=0.3), loaders(TRAIN)[0])
    m = tracker.store.matrix().astype(np.float64)
    assert np.isfinite(m).all()
    expected = _by_hand(m, by, reference)
    assert tracker.history[-1]["mem/traj/score_max"] == pytest.approx(expected.max(), rel=1e-6)
    if by != "mean_loss":
        assert expected.max() != pytest.approx(m.mean(axis=1).max(), rel=1e-3)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # peft on transformers 5
def test_peft_base_reference_is_the_model_without_adapters(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from helpers.lora import LoRALM, causal_lm_row_losses, lora_gpt2_with_live_adapters

    plain, lora = lora_gpt2_with_live_adapters()  # adapters that change the output: "fit_start" would differ
    adapted_at_start = copy.deepcopy(lora).eval()
    ids = torch.randint(0, 20, (12, 10), generator=torch.Generator().manual_seed(1))
    items = [{"input_ids": row, "labels": row} for row in ids]
    tracker = LossTrajectoryTracker(
        source="probe", probe_dataset=items, correct_key=None, reference="peft_base", num_top=0
    )
    trainer(tmp_path, max_epochs=1, callbacks=[tracker]).fit(
        LoRALM(lora), torch.utils.data.DataLoader(items, batch_size=4)
    )

    assert tracker._fit_reference is not None
    np.testing.assert_allclose(tracker._fit_reference, causal_lm_row_losses(plain, ids), rtol=1e-5, atol=1e-6)
    assert not np.allclose(tracker._fit_reference, causal_lm_row_losses(adapted_at_start, ids), rtol=1e-3)
    assert json.loads((tracker.run_dir / "meta.json").read_text())["reference"] == "peft_base"
