"""MembershipInferenceMonitor(reference=...): the pre-fine-tuning reference attack (mem/mia_ref/*)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.data import loaders, make_blobs
from helpers.models import TinyClassifier, dataset_losses
from helpers.reference_resume import check_resume_keeps_the_stored_reference
from helpers.training import fit_with_epoch_checkpoints, trainer
from memcallbacks import MembershipInferenceMonitor
from memcallbacks.metrics import membership_inference
from memcallbacks.utilities.fileio import load_npz

TRAIN, HELD = make_blobs(80, seed=0), make_blobs(50, seed=1)


def _monitor(**kwargs: object) -> MembershipInferenceMonitor:
    return MembershipInferenceMonitor(TRAIN, HELD, fprs=(0.01, 0.1), trajectory_attack=False, **kwargs)


def test_fit_start_reference_is_the_weights_before_the_first_step(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyClassifier(hidden=8)
    at_start = copy.deepcopy(model)
    monitor = _monitor(reference="fit_start", calibrate=True)
    tl, vl = loaders(TRAIN, HELD)
    trainer(tmp_path, max_epochs=3, callbacks=[monitor]).fit(model, tl, vl)

    assert monitor._fit_ref_members is not None
    assert monitor._fit_ref_nonmembers is not None
    np.testing.assert_allclose(
        monitor._fit_ref_members, dataset_losses(at_start, TRAIN), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        monitor._fit_ref_nonmembers, dataset_losses(at_start, HELD), rtol=1e-5, atol=1e-6
    )
    # score = loss now - loss at fit start, the calibrated code path with another reference
    now_m, now_n = dataset_losses(model, TRAIN), dataset_losses(model, HELD)
    expected = membership_inference(
        now_m - dataset_losses(at_start, TRAIN), now_n - dataset_losses(at_start, HELD), fprs=(0.01, 0.1)
    )
    last = monitor.history[-1]
    assert last["mem/mia_ref/auc"] == pytest.approx(expected.auc, abs=1e-6)
    assert last["mem/mia_ref/advantage"] == pytest.approx(expected.advantage, abs=1e-6)
    assert last["mem/mia_ref/tpr@1%fpr"] == pytest.approx(expected.tpr_at_fpr[0.01], abs=1e-6)
    assert last["mem/mia_ref/tpr@10%fpr"] == pytest.approx(expected.tpr_at_fpr[0.1], abs=1e-6)
    # the key set mirrors mem/mia_cal's
    cal = {k.replace("mem/mia_cal/", "") for k in last if k.startswith("mem/mia_cal/")}
    ref = {k.replace("mem/mia_ref/", "") for k in last if k.startswith("mem/mia_ref/")}
    assert ref == cal
    # unlike calibrate=True (reference: the first evaluation), the first evaluation is not at chance
    assert monitor.history[0]["mem/mia_cal/auc"] == 0.5
    assert monitor.history[0]["mem/mia_ref/auc"] != 0.5
    monitor.flush()
    saved = load_npz(monitor.run_dir / "losses.npz")
    np.testing.assert_array_equal(saved["reference_member_losses"], monitor._fit_ref_members)
    np.testing.assert_array_equal(saved["reference_nonmember_losses"], monitor._fit_ref_nonmembers)


def _resumable(
    tmp: Path, max_epochs: int, reference: object, ckpt_path: str | None = None
) -> MembershipInferenceMonitor:
    torch.manual_seed(0)
    monitor = _monitor(reference=reference)
    tl, vl = loaders(TRAIN, HELD, shuffle=False)
    fit_with_epoch_checkpoints(
        tmp, max_epochs, monitor, TinyClassifier(hidden=8), tl, vl, ckpt_path=ckpt_path
    )
    return monitor


@pytest.mark.parametrize("kind", ["fit_start", "module"])
def test_resume_uses_the_stored_reference(tmp_path: Path, kind: str) -> None:
    check_resume_keeps_the_stored_reference(tmp_path, kind, _resumable, lambda cb: cb._fit_ref_members, TRAIN)


def test_reference_with_another_vocabulary_is_refused(tmp_path: Path) -> None:
    monitor = _monitor(reference=TinyClassifier(classes=5))
    tl, vl = loaders(TRAIN, HELD)
    with pytest.raises(ValueError, match=r"logits have 5 entries .* trained model's 3"):
        trainer(tmp_path, max_epochs=1, callbacks=[monitor]).fit(TinyClassifier(), tl, vl)


def test_reference_that_cannot_run_the_probes_is_refused(tmp_path: Path) -> None:
    monitor = _monitor(reference=torch.nn.Linear(4, 3))  # another input width
    tl, vl = loaders(TRAIN, HELD)
    with pytest.raises(ValueError, match="cannot score the probes"):
        trainer(tmp_path, max_epochs=1, callbacks=[monitor]).fit(TinyClassifier(), tl, vl)


def test_peft_base_without_adapters_is_refused_before_training(tmp_path: Path) -> None:
    monitor = _monitor(reference="peft_base")
    model = TinyClassifier()
    tl, vl = loaders(TRAIN, HELD)
    with pytest.raises(ValueError, match="without peft adapters|no Hugging Face model"):
        trainer(tmp_path, max_epochs=1, callbacks=[monitor]).fit(model, tl, vl)
    assert model.global_step == 0


@pytest.mark.parametrize(("value", "error"), [("start", ValueError), (3, TypeError), ("peft", ValueError)])
def test_bad_reference_argument(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="`reference`"):
        MembershipInferenceMonitor(reference=value)  # type: ignore[arg-type]


def test_state_dict_keeps_the_reference() -> None:
    m = MembershipInferenceMonitor(reference="fit_start")
    m._fit_ref_members = np.array([0.1, 0.2], np.float32)
    m._fit_ref_nonmembers = np.array([0.5, np.nan], np.float32)
    other = MembershipInferenceMonitor(reference="fit_start")
    other.load_state_dict(m.state_dict())
    np.testing.assert_array_equal(other._fit_ref_members, m._fit_ref_members)
    np.testing.assert_array_equal(other._fit_ref_nonmembers, m._fit_ref_nonmembers)
    with pytest.raises(ValueError, match="`reference`"):  # another kind of reference: another measurement
        MembershipInferenceMonitor(reference="peft_base").load_state_dict(m.state_dict())


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # peft on transformers 5
def test_peft_base_reference_is_the_model_without_adapters(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from helpers.lora import LoRALM, causal_lm_row_losses, lora_gpt2_with_live_adapters

    plain, lora = lora_gpt2_with_live_adapters()  # adapters that change the output from the start
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 20, (24, 10), generator=g)
    items = [{"input_ids": row, "labels": row} for row in ids]
    monitor = MembershipInferenceMonitor(
        items[:12], items[12:], reference="peft_base", trajectory_attack=False
    )
    loader = torch.utils.data.DataLoader(items[:12], batch_size=4)
    trainer(tmp_path, max_epochs=1, callbacks=[monitor]).fit(LoRALM(lora), loader)

    assert monitor._fit_ref_members is not None
    adapted = causal_lm_row_losses(lora, ids[:12])  # adapters on (and trained): not the reference
    assert not np.allclose(monitor._fit_ref_members, adapted, rtol=1e-3)
    np.testing.assert_allclose(
        monitor._fit_ref_members, causal_lm_row_losses(plain, ids[:12]), rtol=1e-5, atol=1e-6
    )
    assert monitor._fit_ref_nonmembers is not None
    np.testing.assert_allclose(
        monitor._fit_ref_nonmembers, causal_lm_row_losses(plain, ids[12:]), rtol=1e-5, atol=1e-6
    )
    assert "mem/mia_ref/auc" in monitor.history[-1]
