"""Bad-input matrix across the public API (issue 8, item 4).

Each case either raises a clear error that names the argument and the fix (checked with
``match=``), or is handled: training finishes, at most one warning about it, and a counted
metric (``mem/traj/nonfinite``, ``mem/mia/nonfinite``, ``mem/traj/visited_frac``) says what
happened. None may crash inside numpy/torch, and a problem that is only in logging never stops
training.

It stays in tests/hardening: one parametrised matrix over every public class and function, built on
shared fault-injecting models and loggers; the per-area error tests live in tests/<area>/.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from helpers import every_monitor as H
from helpers.training import trainer
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
    TrajectoryStore,
    split_index,
)
from memcallbacks.metrics import exposure_from_rank, membership_inference

DATA = H.Data()


# -- models with one fault each -------------------------------------------------------------------
class Classifier(pl.LightningModule):
    def __init__(self, fault: str = "") -> None:
        super().__init__()
        self.net = torch.nn.Linear(H.DIM, H.CLASSES)
        self.fault = fault

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.fault == "nan_probe" and not self.training:
            out = out.clone()
            out[0] = float("nan")  # the first sample of every probe batch
        return out

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        index, (x, y) = split_index(batch)
        per_sample = F.cross_entropy(self(x), y, reduction="none")
        out = {"loss": per_sample.mean(), "sample_loss": per_sample.detach(), "sample_index": index}
        if self.fault == "tensor_only":
            return out["loss"]
        if self.fault == "index_too_large":
            out["sample_index"] = index + 10_000
        if self.fault == "nan_loss" and batch_idx == 0:
            loss = per_sample.detach().clone()
            loss[0], loss[1] = float("nan"), float("inf")
            out["sample_loss"] = loss
        if self.fault == "matrix_loss":
            out["sample_loss"] = per_sample.detach()[:, None].expand(-1, 5)
        return out

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Stream(IterableDataset):  # type: ignore[type-arg]
    """An iterable dataset that yields (index, (x, y)) like IndexedDataset does."""

    def __iter__(self) -> Any:
        for i in range(len(DATA.train)):
            yield i, DATA.train[i]


class RaisingExperiment:
    def __getattr__(self, name: str) -> Any:
        raise ConnectionError(f"tracker down ({name})")


class BrokenTensorBoard(TensorBoardLogger):
    """A TensorBoard logger whose every experiment call raises (scalars are dropped by Lightning's path)."""

    @property
    def experiment(self) -> Any:
        return RaisingExperiment()

    def log_metrics(self, metrics: Any, step: Any = None) -> None:
        self.experiment.add_scalar("x", 0.0)  # raises: Lightning's own scalar logging is broken too

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        pass


def fit(tmp: Path, callbacks: list[Any], fault: str = "", loader: Any = None, **kwargs: Any) -> pl.Trainer:
    t = trainer(tmp, callbacks=callbacks, **{"logger": False, **kwargs})
    if loader is None:
        loader = DataLoader(IndexedDataset(DATA.train), batch_size=8)
    t.fit(Classifier(fault), loader)
    return t


def tracker(tmp: Path, **kwargs: Any) -> LossTrajectoryTracker:
    return LossTrajectoryTracker(run_dir=tmp / "run", **kwargs)


def mia(tmp: Path, **kwargs: Any) -> MembershipInferenceMonitor:
    return MembershipInferenceMonitor(nonmembers=DATA.val, num_probes=16, run_dir=tmp / "run", **kwargs)


def canaries(**kwargs: Any) -> CanarySet:
    return CanarySet(kwargs.pop("format", "pin {secret}."), CharTokenizer(), **kwargs)


# -- handled cases: training finishes; checked by a function of (trainer, warnings) ----------------
def handled_nan_step_losses(tmp: Path) -> tuple[pl.Trainer, Any]:
    t = tracker(tmp)
    return fit(tmp, [t], fault="nan_loss"), t


def check_nan_step_losses(trainer: pl.Trainer, t: Any, caught: list[str]) -> None:
    assert float(trainer.callback_metrics["mem/traj/nonfinite"]) == 2.0
    assert np.isnan(t.store.matrix()[:2]).all()  # stored as not visited
    assert sum("NaN/inf" in w for w in caught) == 2  # one per epoch: each epoch has its own two


def handled_nan_probe(tmp: Path) -> tuple[pl.Trainer, Any]:
    m = mia(tmp, batch_size=8)
    return fit(tmp, [m], fault="nan_probe"), m


def check_nan_probe(trainer: pl.Trainer, m: Any, caught: list[str]) -> None:
    assert float(trainer.callback_metrics["mem/mia/nonfinite"]) == 2 + 3  # one per probe batch
    assert 0.0 <= float(trainer.callback_metrics["mem/mia/auc"]) <= 1.0
    assert sum("NaN/inf" in w for w in caught) == 1  # warned once over both epochs


def handled_limit_batches(tmp: Path) -> tuple[pl.Trainer, Any]:
    t = tracker(tmp)
    return fit(tmp, [t], limit_train_batches=2), t


def check_limit_batches(trainer: pl.Trainer, t: Any, caught: list[str]) -> None:
    assert float(trainer.callback_metrics["mem/traj/visited_frac"]) == pytest.approx(16 / len(DATA.train))
    assert int(np.isfinite(t.store.matrix()[:, -1]).sum()) == 16


def handled_iterable_with_num_samples(tmp: Path) -> tuple[pl.Trainer, Any]:
    t = tracker(tmp, num_samples=len(DATA.train))
    return fit(tmp, [t], loader=DataLoader(Stream(), batch_size=8)), t


def check_iterable_with_num_samples(trainer: pl.Trainer, t: Any, caught: list[str]) -> None:
    assert float(trainer.callback_metrics["mem/traj/visited_frac"]) == 1.0


def raising_logger_everywhere(tmp: Path) -> None:
    """Every call of the logger raises, Lightning's own scalar logging included: that path is Lightning's."""
    fit(tmp, [tracker(tmp), mia(tmp)], logger=BrokenTensorBoard(str(tmp), name="tb"))


def handled_raising_rich_logger(tmp: Path) -> tuple[pl.Trainer, Any]:
    class RichBroken(TensorBoardLogger):
        @property
        def experiment(self) -> Any:
            return RaisingExperiment()

        def log_metrics(self, metrics: Any, step: Any = None) -> None:
            pass  # scalars fine; every rich record (histogram, figure) raises

        def finalize(self, status: str) -> None:
            pass

        def save(self) -> None:
            pass

        def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
            pass

    t = tracker(tmp)
    m = mia(tmp)
    return fit(tmp, [t, m], logger=RichBroken(str(tmp), name="tb")), (t, tmp)


def check_raising_rich_logger(trainer: pl.Trainer, obj: Any, caught: list[str]) -> None:
    t, tmp = obj
    assert sum("failed to record" in w for w in caught) == 1  # once per logger
    assert t.recorded_epochs == [0, 1]  # training went on; the run directory has the numbers
    assert (tmp / "run" / "membership" / "losses.npz").is_file()


def handled_missing_key_not_strict(tmp: Path) -> tuple[pl.Trainer, Any]:
    stop = LeakageEarlyStopping("mem/typo/auc", 0.6, strict=False)
    return fit(tmp, [tracker(tmp), stop]), stop


def check_missing_key_not_strict(trainer: pl.Trainer, stop: Any, caught: list[str]) -> None:
    assert trainer.current_epoch == 2
    assert stop.stopped_epoch is None
    assert sum("mem/typo/auc" in w for w in caught) == 1


HANDLED: dict[str, tuple[Callable[..., Any], Callable[..., None]]] = {
    "nan_inf_step_losses": (handled_nan_step_losses, check_nan_step_losses),
    "nan_probe_losses": (handled_nan_probe, check_nan_probe),
    "limit_train_batches": (handled_limit_batches, check_limit_batches),
    "iterable_dataset_with_num_samples": (handled_iterable_with_num_samples, check_iterable_with_num_samples),
    "logger_raises_on_rich_records": (handled_raising_rich_logger, check_raising_rich_logger),
    "unknown_monitor_key_strict_false": (handled_missing_key_not_strict, check_missing_key_not_strict),
}


# -- cases that must raise a clear error --------------------------------------------------------------
def _unwritable(tmp: Path) -> None:
    (tmp / "file.txt").write_text("not a folder")
    fit(tmp, [LossTrajectoryTracker(run_dir=tmp / "file.txt" / "sub")])


RAISES: list[Any] = [
    # (id, call(tmp), exception, match)
    (
        "unknown_source",
        lambda tmp: LossTrajectoryTracker(source="epoch"),
        ValueError,
        r"`source` can be 'step', 'probe', got 'epoch'",
    ),
    (
        "loss_key_is_scaled_loss",
        lambda tmp: LossTrajectoryTracker(loss_key="loss"),
        ValueError,
        r"`loss_key` must not be 'loss'.*sample_loss",
    ),
    (
        "every_n_epochs_zero",
        lambda tmp: MembershipInferenceMonitor(every_n_epochs=0),
        ValueError,
        r"`every_n_epochs` must be an integer >= 1.*use 1",
    ),
    (
        "fprs_out_of_range",
        lambda tmp: MembershipInferenceMonitor(fprs=(0.0, 1.5)),
        ValueError,
        r"`fprs` must hold false-positive rates.*got 0\.0.*e\.g\. fprs=",
    ),
    (
        "fprs_wrong_type",
        lambda tmp: MembershipInferenceMonitor(fprs=("1%",)),
        TypeError,
        r"`fprs` must hold numbers",
    ),
    (
        "empty_members",
        lambda tmp: MembershipInferenceMonitor(members=[]),
        ValueError,
        r"`members` is empty.*at least one sample",
    ),
    (
        "iterable_members",
        lambda tmp: MembershipInferenceMonitor(members=Stream()),
        TypeError,
        r"`members` must be a map-style dataset",
    ),
    (
        "num_probe_float",
        lambda tmp: MembershipInferenceMonitor(num_probes=0.5),
        TypeError,
        r"`num_probes` must be an integer >= 1.*num_probes=1000",
    ),
    (
        "format_two_slots",
        lambda tmp: canaries(format="pin {secret} {secret}"),
        ValueError,
        r"`format` must contain the slot \{secret\} exactly once.*e\.g\.",
    ),
    ("format_no_slot", lambda tmp: canaries(format="pin"), ValueError, r"`format` must contain the slot"),
    (
        "space_too_small",
        lambda tmp: canaries(alphabet="01", length=1, repetitions=(1,), per_count=3),
        ValueError,
        r"randomness space has 2 candidates.*longer `length`",
    ),
    (
        "alphabet_not_encodable",
        lambda tmp: canaries(alphabet="\u00e9\u00e8"),
        ValueError,
        r"cannot encode the secret character",
    ),
    (
        "repetitions_zero",
        lambda tmp: canaries(repetitions=(0, 2)),
        ValueError,
        r"`repetitions` must hold integers >= 1",
    ),
    (
        "canaries_wrong_type",
        lambda tmp: CanaryExposureMonitor("pin {secret}."),
        TypeError,
        r"`canaries` must be a memcallbacks.CanarySet",
    ),
    (
        "exact_on_huge_space",
        lambda tmp: CanaryExposureMonitor(canaries(length=8), method="exact"),
        ValueError,
        r"method='exact'.*use method='extrapolated'",
    ),
    (
        "audit_one_canary",
        lambda tmp: PrivacyAuditMonitor(TensorDataset(torch.zeros(1, 2))),
        ValueError,
        r"`canaries` must hold at least 2",
    ),
    (
        "audit_included_shape",
        lambda tmp: PrivacyAuditMonitor(DATA.audit_canaries, included=[True, False]),
        ValueError,
        r"`included` must be a bool mask of shape \(12,\)",
    ),
    (
        "audit_k_too_large",
        lambda tmp: PrivacyAuditMonitor(DATA.audit_canaries, k_pos=10, k_neg=10),
        ValueError,
        r"`k_pos` \+ `k_neg` must be between 1 and the number of canaries",
    ),
    (
        "audit_delta_nan",
        lambda tmp: PrivacyAuditMonitor(DATA.audit_canaries, delta=math.nan),
        ValueError,
        r"`delta` must be a finite number in \[0.0, 1.0\), got nan",
    ),
    (
        "dp_delta_too_large",
        lambda tmp: DPEpsilonMonitor(delta=1.5),
        ValueError,
        r"`delta` must be a finite number in \[0.0, 1.0\), got 1.5 .*delta=1e-5",
    ),
    (
        "stop_threshold_nan",
        lambda tmp: LeakageEarlyStopping("mem/mia/auc", math.nan),
        ValueError,
        r"`threshold` for 'mem/mia/auc' must not be NaN",
    ),
    (
        "stop_condition_unknown_key",
        lambda tmp: LeakageEarlyStopping(conditions=[{"monitor": "mem/mia/auc", "thresh": 0.6}]),
        TypeError,
        r"condition dict takes the keys monitor, threshold, mode, patience",
    ),
    (
        "stop_mode_unknown",
        lambda tmp: LeakageEarlyStopping("mem/mia/auc", 0.6, "above"),
        ValueError,
        r"`mode` can be 'max', 'min', got 'above'",
    ),
    (
        "stop_check_finite_string",
        lambda tmp: LeakageEarlyStopping("mem/mia/auc", 0.6, check_finite="false"),
        TypeError,
        r"`check_finite` must be True or False, got 'false' \(str\)",
    ),
    (
        "stop_run_dir_int",
        lambda tmp: LeakageEarlyStopping("mem/mia/auc", 0.6, run_dir=123),
        TypeError,
        r"`run_dir` must be a path \(str or os.PathLike\), got 123",
    ),
    (
        "audit_seed_negative",
        lambda tmp: PrivacyAuditMonitor(DATA.audit_canaries, seed=-1),
        ValueError,
        r"`seed` must be an integer in \[0, 9223372036854775807\], got -1 .*non-negative integer",
    ),
    (
        "audit_seed_string",
        lambda tmp: PrivacyAuditMonitor(DATA.audit_canaries, seed="a"),
        TypeError,
        r"`seed` must be an integer .*got 'a' \(str\)",
    ),
    (
        "dp_restore_accountant_string",
        lambda tmp: DPEpsilonMonitor(restore_accountant="no"),
        TypeError,
        r"`restore_accountant` must be True or False, got 'no'",
    ),
    (
        "store_dtype_int",
        lambda tmp: TrajectoryStore(10, dtype="int8"),
        ValueError,
        r"`dtype` must be 'float16' \(default\) or 'float32'",
    ),
    (
        "store_wrong_shape",
        lambda tmp: TrajectoryStore(3).append(np.zeros((3, 2))),
        ValueError,
        r"`losses` must have shape \(3,\)",
    ),
    (
        "store_indices_out_of_range",
        lambda tmp: _store_with_epoch().trajectories([5]),
        IndexError,
        r"`indices` must lie in \[0, 3\)",
    ),
    (
        "indexed_iterable",
        lambda tmp: IndexedDataset(Stream()),
        TypeError,
        r"`dataset` must be a map-style dataset.*yield \{'index': i",
    ),
    (
        "mia_empty_losses",
        lambda tmp: membership_inference(np.array([]), np.array([1.0])),
        ValueError,
        r"`member_losses` must be non-empty",
    ),
    (
        "mia_nan_losses",
        lambda tmp: membership_inference(np.array([np.nan, 1.0]), np.array([1.0])),
        ValueError,
        r"`member_losses` must be finite.*filter or replace",
    ),
    ("exposure_rank_zero", lambda tmp: exposure_from_rank(0, 10), ValueError, r"`rank` must be >= 1"),
    (
        "unwritable_run_dir",
        _unwritable,
        PermissionError,
        r"cannot write the run directory .*file\.txt.*pass `run_dir=` a writable folder",
    ),
    (
        "training_step_returns_tensor",
        lambda tmp: fit(tmp, [tracker(tmp)], fault="tensor_only"),
        RuntimeError,
        r"(?s)IndexedDataset\(dataset\).*split_index\(batch\)\n.*reduction=\"none\"\)\n.*return \{\"loss\"",
    ),
    (
        "sample_index_out_of_range",
        lambda tmp: fit(tmp, [tracker(tmp)], fault="index_too_large"),
        ValueError,
        r"sample index 10039 in `sample_index` is >= num_samples=40; pass `num_samples=`",
    ),
    (
        "sample_loss_not_per_sample",
        lambda tmp: fit(tmp, [tracker(tmp)], fault="matrix_loss"),
        ValueError,
        r"`sample_loss` and `sample_index` must both have shape \[B\].*reduction='none'",
    ),
    (
        "iterable_dataset_no_num_samples",
        lambda tmp: fit(tmp, [tracker(tmp)], loader=DataLoader(Stream(), batch_size=8)),
        ValueError,
        r"cannot tell the number of samples.*Pass `num_samples=`",
    ),
    (
        "sample_loss_fn_wrong_shape",
        lambda tmp: fit(tmp, [mia(tmp, sample_loss_fn=lambda m, b: m(b[0]))]),
        ValueError,
        r"sample_loss_fn",
    ),
    (
        "unknown_monitor_key_strict",
        lambda tmp: fit(tmp, [tracker(tmp), LeakageEarlyStopping("mem/typo/auc", 0.6)]),
        RuntimeError,
        r"monitors \['mem/typo/auc'\].*HINT",
    ),
    (
        "no_accountant",
        lambda tmp: fit(tmp, [DPEpsilonMonitor()]),
        RuntimeError,
        r"(?s)found no Opacus accountant.*make_private\(self, opt",
    ),
    ("logger_raises_everywhere", raising_logger_everywhere, ConnectionError, r"tracker down"),
]


def _store_with_epoch() -> TrajectoryStore:
    store = TrajectoryStore(3)
    store.append(np.array([1.0, 2.0, 3.0]))
    return store


def _fail_loudly_inside_libraries(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    """The error is raised by memcallbacks (or the tracker under test), not deep inside numpy/torch."""
    tb = excinfo.traceback
    last = str(tb[-1].path)
    assert "numpy" not in last, last
    assert "/torch/" not in last, last


@pytest.mark.parametrize(("case", "call", "exc", "match"), RAISES, ids=[c[0] for c in RAISES])
def test_bad_input_raises_clear_error(tmp_path: Path, case: str, call: Any, exc: type, match: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(exc, match=match) as excinfo:
            call(tmp_path)
    paths = [str(e.path) for e in excinfo.traceback]
    if case == "logger_raises_everywhere":
        # raised by Lightning itself (it calls logger.save() before the first epoch), never by a monitor:
        # the rich-record path is covered by the handled case `logger_raises_on_rich_records`
        assert any("/loggers/" in p for p in paths)
        assert not any("memcallbacks/callbacks" in p for p in paths)
    else:
        _fail_loudly_inside_libraries(excinfo)
        assert any("memcallbacks" in p for p in paths)


@pytest.mark.parametrize("case", sorted(HANDLED))
def test_bad_input_is_handled_with_one_warning_and_a_metric(tmp_path: Path, case: str) -> None:
    run, check = HANDLED[case]
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        trainer, obj = run(tmp_path)
    assert trainer.state.finished
    check(trainer, obj, [str(w.message) for w in records])


def test_missing_optional_packages(tmp_path: Path) -> None:
    """Without wandb, mlflow, opacus and matplotlib: the callbacks train; the optional features say what to install."""
    script = f"""
import sys
for name in ("wandb", "mlflow", "opacus", "tensorboard", "tensorboardX"):
    sys.modules[name] = None
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
import warnings; warnings.simplefilter("ignore")
import torch, pytorch_lightning as pl
from torch.utils.data import DataLoader
import memcallbacks
from memcallbacks import IndexedDataset, LossTrajectoryTracker, MembershipInferenceMonitor, DPEpsilonMonitor
from helpers import every_monitor as H
d = H.Data()
cbs = [LossTrajectoryTracker(run_dir={str(tmp_path)!r}),
       MembershipInferenceMonitor(nonmembers=d.val, num_probes=8, run_dir={str(tmp_path)!r})]
t = pl.Trainer(max_epochs=1, callbacks=cbs, logger=pl.loggers.CSVLogger({str(tmp_path)!r}), enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
t.fit(H.HardModel(accountant=False), DataLoader(IndexedDataset(d.train), batch_size=8))
print("FIT", sorted(k for k in t.callback_metrics if k.startswith("mem/"))[:2])
from memcallbacks.callbacks.dp import make_private
try:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    make_private(H.HardModel(accountant=False), opt, noise_multiplier=1.0, max_grad_norm=1.0)
except ImportError as e:
    print("DP", e)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "FIT ['mem/gap/loss', 'mem/gap/loss_ratio']" in out
    assert "DP DP-SGD needs Opacus: pip install 'memcallbacks[opacus]'" in out

    # the report (matplotlib extra) in a process without matplotlib: an install hint, not a bare failure
    report = f"""
import sys
sys.modules["matplotlib"] = None
from memcallbacks.report import build_report
try:
    build_report({str(tmp_path)!r})
except ImportError as e:
    print("REPORT", e)
"""
    proc = subprocess.run([sys.executable, "-c", report], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "REPORT" in proc.stdout, proc.stdout
    assert "pip install" in proc.stdout, proc.stdout
