"""Both Lightning namespaces and LightningCLI configuration (issue 8, item 6).

It stays in tests/hardening: it runs every callback under both Lightning namespaces and from a
LightningCLI file (memcallbacks.lightning), across areas.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from helpers import every_monitor as H
from memcallbacks import (
    CanaryExposureMonitor,
    CanarySet,
    CharTokenizer,
    DPEpsilonMonitor,
    IndexedDataset,
    LeakageEarlyStopping,
    LossTrajectoryTracker,
    MembershipInferenceMonitor,
    PrivacyAuditMonitor,
    split_index,
)
from memcallbacks.utilities.fileio import load_json, load_npy, load_npz


def _module_class(namespace: str) -> type:
    L = importlib.import_module(namespace)

    class Classifier(L.LightningModule):  # type: ignore[name-defined, misc]
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(H.DIM, H.CLASSES)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
            index, (x, y) = split_index(batch)
            per_sample = F.cross_entropy(self(x), y, reduction="none")
            return {"loss": per_sample.mean(), "sample_loss": per_sample.detach(), "sample_index": index}

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Classifier


@pytest.mark.parametrize("namespace", ["pytorch_lightning", "lightning.pytorch"])
def test_callbacks_run_under_both_namespaces(tmp_path: Path, namespace: str) -> None:
    L = importlib.import_module(namespace)
    data = H.Data()
    tracker = LossTrajectoryTracker(run_dir=tmp_path)
    mia = MembershipInferenceMonitor(nonmembers=data.val, num_probes=16, run_dir=tmp_path)
    stopper = LeakageEarlyStopping("mem/traj/epochs", 1.5, run_dir=tmp_path)
    trainer = L.Trainer(
        default_root_dir=str(tmp_path),
        accelerator="cpu",
        devices=1,
        max_epochs=4,
        callbacks=[stopper, tracker, mia],
        logger=L.loggers.CSVLogger(str(tmp_path), name="csv"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    assert isinstance(trainer, L.Trainer)
    trainer.fit(_module_class(namespace)(), DataLoader(IndexedDataset(data.train), batch_size=8))
    assert stopper.stopped_epoch == 1
    assert trainer.current_epoch == 2
    assert tracker.recorded_epochs == [0, 1]
    assert float(trainer.callback_metrics["mem/traj/epochs"]) == 2.0
    assert 0.0 <= float(trainer.callback_metrics["mem/mia/auc"]) <= 1.0
    assert load_npy(tmp_path / "trajectory" / "epoch_0001.npy").shape == (len(data.train),)
    assert list(load_npz(tmp_path / "membership" / "losses.npz")["epochs"]) == [0, 1]
    assert load_json(tmp_path / "stopping.json")["stopped_epoch"] == 1
    csv = next((tmp_path / "csv").rglob("metrics.csv")).read_text()
    assert "mem/traj/loss_mean" in csv
    assert "mem/mia/auc" in csv


CONFIG = """
trainer:
  logger: false
  enable_checkpointing: false
  callbacks:
    - class_path: memcallbacks.LossTrajectoryTracker
      init_args: {every_n_epochs: 2, dtype: float32, name: probe, source: probe, num_probes: 10}
    - class_path: memcallbacks.MembershipInferenceMonitor
      init_args: {num_probes: 16, calibrate: true, fprs: [0.01, 0.1]}
    - class_path: memcallbacks.CanaryExposureMonitor
      init_args:
        canaries:
          class_path: memcallbacks.CanarySet
          init_args:
            format: "pin {secret}."
            tokenizer: {class_path: memcallbacks.CharTokenizer}
            alphabet: "0123"
            length: 3
            repetitions: [1, 4]
            per_count: 2
        method: exact
        num_references: 50
    - class_path: memcallbacks.PrivacyAuditMonitor
      init_args:
        canaries:
          class_path: memcallbacks.CanarySet
          init_args:
            format: "pin {secret}."
            tokenizer: {class_path: memcallbacks.CharTokenizer}
            repetitions: [1]
            per_count: 20
            seed: 3
        k_pos: 3
        k_neg: 4
        delta: 1.0e-6
    - class_path: memcallbacks.DPEpsilonMonitor
      init_args: {delta: 1.0e-6, every_n_epochs: 3}
    - class_path: memcallbacks.LeakageEarlyStopping
      init_args:
        conditions:
          - {monitor: mem/mia/auc, threshold: 0.7}
          - {monitor: mem/canary/exposure_max, threshold: 5.0, patience: 2}
        restore: best_safe
"""


_CALLBACK_NAMES = (
    "LossTrajectoryTracker",
    "MembershipInferenceMonitor",
    "CanaryExposureMonitor",
    "PrivacyAuditMonitor",
    "DPEpsilonMonitor",
    "LeakageEarlyStopping",
)


@pytest.mark.parametrize("namespace", ["pytorch_lightning", "lightning.pytorch"])
def test_every_callback_is_configurable_from_lightning_cli_yaml(tmp_path: Path, namespace: str) -> None:
    """``pytorch_lightning.cli`` takes ``memcallbacks.X``; ``lightning.pytorch.cli`` ``memcallbacks.lightning.X``."""
    LightningCLI = importlib.import_module(f"{namespace}.cli").LightningCLI
    callback_base = importlib.import_module(namespace).Callback
    config_text = CONFIG
    if namespace == "lightning.pytorch":
        for name in _CALLBACK_NAMES:
            config_text = config_text.replace(
                f"class_path: memcallbacks.{name}", f"class_path: memcallbacks.lightning.{name}"
            )
        assert config_text.count("memcallbacks.lightning.") == len(_CALLBACK_NAMES)
    config = tmp_path / "config.yaml"
    config.write_text(config_text)
    args = ["--config", str(config), f"--trainer.default_root_dir={tmp_path}"]
    model_class = H.HardModel if namespace == "pytorch_lightning" else _lightning_hard_model()
    cli = LightningCLI(model_class, run=False, args=args, save_config_callback=None)
    by_type = {type(cb).__name__: cb for cb in cli.trainer.callbacks}
    for name in _CALLBACK_NAMES:
        assert isinstance(by_type[name], callback_base), name

    tracker = by_type["LossTrajectoryTracker"]
    assert isinstance(tracker, LossTrajectoryTracker)
    assert (tracker.every_n_epochs, tracker.dtype, tracker.name, tracker.source) == (
        2,
        "float32",
        "probe",
        "probe",
    )
    mia = by_type["MembershipInferenceMonitor"]
    assert isinstance(mia, MembershipInferenceMonitor)
    assert mia.calibrate
    assert mia.fprs == (0.01, 0.1)

    # object arguments: a CanarySet (with its tokenizer) built from nested class_path/init_args
    exposure = by_type["CanaryExposureMonitor"]
    assert isinstance(exposure, CanaryExposureMonitor)
    assert isinstance(exposure.canaries, CanarySet)
    assert isinstance(exposure.canaries.tokenizer, CharTokenizer)
    reference = CanarySet(
        "pin {secret}.", CharTokenizer(), alphabet="0123", length=3, repetitions=(1, 4), per_count=2
    )
    assert exposure.canaries.secrets == reference.secrets
    assert exposure.canaries.space_size == 64
    audit = by_type["PrivacyAuditMonitor"]
    assert isinstance(audit, PrivacyAuditMonitor)
    assert audit.is_token_canaries
    assert (audit.num_canaries, audit.k_pos, audit.k_neg, audit.delta) == (20, 3, 4, 1e-6)

    dp = by_type["DPEpsilonMonitor"]
    assert isinstance(dp, DPEpsilonMonitor)
    assert dp.delta == 1e-6
    assert dp.every_n_epochs == 3
    stop = by_type["LeakageEarlyStopping"]
    assert isinstance(stop, LeakageEarlyStopping)
    assert stop.restore == "best_safe"
    assert [(c.monitor, c.threshold, c.patience) for c in stop.conditions] == [
        ("mem/mia/auc", 0.7, 1),
        ("mem/canary/exposure_max", 5.0, 2),
    ]

    # and the configured callbacks train
    data = H.Data()
    if namespace == "lightning.pytorch":
        # one implementation: the lightning classes are subclasses of memcallbacks' own, same state keys
        assert type(stop).__mro__[1] is LeakageEarlyStopping
        assert stop.state_key == LeakageEarlyStopping(conditions=stop.conditions).state_key
        return  # (run=False) the fit below is the same code under the other namespace
    cli.trainer.fit_loop.max_epochs = 1
    cli.trainer.fit(cli.model, data.train_loader(), data.val_loader())
    assert np.isfinite(float(cli.trainer.callback_metrics["mem/canary/exposure_max"]))
    assert float(cli.trainer.callback_metrics["mem/audit/guesses"]) == 7.0
    assert (tmp_path / "memcallbacks" / "membership" / "losses.npz").is_file()  # under default_root_dir


def _lightning_hard_model() -> type:
    """The test model as a ``lightning.pytorch.LightningModule`` (same code, the other namespace)."""
    import lightning.pytorch as L

    return type("HardModel", (H.HardModel, L.LightningModule), {"__module__": H.HardModel.__module__})


def test_run_directory_files_get_the_usual_permissions(tmp_path: Path) -> None:
    """Atomic writes go through mkstemp (mode 0600): the renamed file must get the umask's mode instead,
    so a TensorBoard server or a teammate running as another user can read the run directory."""
    import os

    from memcallbacks.utilities import fileio

    umask = os.umask(0o022)
    os.umask(umask)
    for path in (
        fileio.save_json(tmp_path / "a.json", {"x": 1}),
        fileio.save_npz(tmp_path / "b.npz", x=np.zeros(2)),
        fileio.save_npy(tmp_path / "c.npy", np.zeros(2)),
    ):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
