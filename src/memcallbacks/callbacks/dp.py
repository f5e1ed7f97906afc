"""DP-SGD with Opacus in Lightning, and a callback that logs the accountant's epsilon.

DP-SGD (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016) clips each
per-sample gradient to ``max_grad_norm`` and adds Gaussian noise of standard deviation
``noise_multiplier * max_grad_norm`` to their sum; with Poisson-sampled batches a privacy
accountant turns the steps taken into an (epsilon, delta) guarantee. Opacus (Yousefpour et
al. 2021, ``pip install memcallbacks[opacus]``) implements both.

* :func:`make_private`: the Lightning pattern of Opacus' own example
  (``examples/mnist_lightning.py``): inside ``configure_optimizers``, hand the module, its
  optimizer and the Trainer's training DataLoader to ``PrivacyEngine.make_private`` and
  return the DP optimizer. Lightning keeps calling the LightningModule itself; Opacus'
  hooks on its layers record per-sample gradients. The DataLoader must already sample
  Poisson-style (wrap it with ``opacus.data_loader.DPDataLoader.from_data_loader`` or the
  datamodule with ``opacus.lightning.DPLightningDataModule``): Lightning iterates its own
  loader, not the one ``make_private`` returns.
* :class:`DPEpsilonMonitor`: logs ``mem/dp/epsilon`` at a fixed ``delta`` each epoch.

Monitors keep working on the DP model: they call ``pl_module(x)`` in eval mode without
gradients, and Opacus' hooks record nothing then (they skip modules in eval mode and
forwards without grad).

Guards (docs/architecture.md, "Known pitfalls"): epsilon is read from a deep copy of the accountant, never the
live one (the GDP accountant's ``get_epsilon`` once popped its history); an accountant that
fails (e.g. PRV beyond epsilon ~10, "cannot compute epsilon") is warned about once and the
epoch's value skipped; the accountant's name and the delta are logged and saved; a training
DataLoader that does not sample Poisson-style (the accounting assumes it) is warned about.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from memcallbacks import rundir
from memcallbacks.callbacks import probes
from memcallbacks.callbacks._base import MemorisationCallback
from memcallbacks.callbacks.audit import check_delta
from memcallbacks.utilities import compat
from memcallbacks.utilities.validation import check_bool, check_choice, check_real

__all__ = ["DPEpsilonMonitor", "is_poisson_loader", "make_private"]

_OPACUS_HINT = "DP-SGD needs Opacus: pip install 'memcallbacks[opacus]'"


def _import_opacus() -> Any:
    try:
        import opacus
    except ImportError as e:  # pragma: no cover - opacus is an optional extra
        raise ImportError(_OPACUS_HINT) from e
    return opacus


def is_poisson_loader(loader: Any) -> bool:
    """Whether every DataLoader in ``loader`` samples Poisson-style (Opacus' samplers).

    True for ``opacus.data_loader.DPDataLoader`` and for loaders whose batch sampler is
    Opacus' ``UniformWithReplacementSampler`` or ``DistributedUniformWithReplacementSampler``.
    """
    try:
        from opacus.data_loader import DPDataLoader
        from opacus.utils.uniform_sampler import (
            DistributedUniformWithReplacementSampler,
            UniformWithReplacementSampler,
        )
    except ImportError:  # pragma: no cover
        return False
    loaders = list(probes.unwrap_loaders(loader))
    if not loaders:
        return False
    poisson_samplers = (UniformWithReplacementSampler, DistributedUniformWithReplacementSampler)
    return all(
        isinstance(dl, DPDataLoader) or isinstance(getattr(dl, "batch_sampler", None), poisson_samplers)
        for dl in loaders
    )


def _training_loader(trainer: Any, poisson_sampling: bool) -> tuple[Any, bool]:
    """The one training DataLoader of ``trainer`` and whether it samples Poisson-style.

    Raises:
        ValueError: not exactly one loader, or ``poisson_sampling=True`` with a non-Poisson loader.
    """
    trainer.fit_loop.setup_data()
    loaders = list(probes.unwrap_loaders(trainer.train_dataloader))
    if len(loaders) != 1:
        raise ValueError(
            f"make_private() needs exactly one training DataLoader, found {len(loaders)}; "
            "combine the datasets into one loader"
        )
    data_loader = loaders[0]
    poisson = is_poisson_loader(data_loader)
    if poisson_sampling and not poisson:
        raise ValueError(
            f"the training DataLoader ({type(data_loader).__name__}) does not sample Poisson-style, which "
            "the privacy accounting assumes; wrap it: `DPDataLoader.from_data_loader(loader)` (from "
            "opacus.data_loader) or the datamodule in `opacus.lightning.DPLightningDataModule`, or pass "
            "poisson_sampling=False to accept a nominal epsilon"
        )
    if not poisson:
        rank_zero_warn(
            "make_private(poisson_sampling=False): the accountant's epsilon assumes Poisson sampling, "
            "which this DataLoader does not do; treat the reported epsilon as nominal"
        )
    return data_loader, poisson


def make_private(
    pl_module: pl.LightningModule,
    optimizer: torch.optim.Optimizer,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    privacy_engine: Any = None,
    accountant: str = "rdp",
    poisson_sampling: bool = True,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """Make a LightningModule train with DP-SGD; call it in ``configure_optimizers``.

    Fetches the Trainer's training DataLoader, calls Opacus' ``PrivacyEngine.make_private``
    on the module, optimizer and loader, stores the engine as ``pl_module.privacy_engine``
    (where :class:`DPEpsilonMonitor` finds it) and returns the DP optimizer. Calling it again
    (a second ``fit``) removes the hooks of the previous call first.

    Args:
        pl_module: the LightningModule (attached to a Trainer: call from ``configure_optimizers``).
        optimizer: its ordinary optimizer.
        noise_multiplier: noise standard deviation relative to ``max_grad_norm``.
        max_grad_norm: per-sample gradient clipping norm.
        privacy_engine: an ``opacus.PrivacyEngine``; default ``pl_module.privacy_engine`` if
            set, else a new one with ``accountant``.
        accountant: ``"rdp"``, ``"gdp"`` or ``"prv"`` for a new engine.
        poisson_sampling: the training DataLoader samples Poisson-style (checked). Pass
            ``False`` to train on an ordinary loader anyway: the accountant's epsilon then
            assumes a sampling that did not happen (a warning says so).
        **kwargs: passed to ``PrivacyEngine.make_private`` (e.g. ``clipping``,
            ``noise_generator``).

    Returns:
        The ``opacus.optimizers.DPOptimizer`` to return from ``configure_optimizers``.

    Raises:
        RuntimeError: the module is not attached to a Trainer.
        ValueError: ``poisson_sampling=True`` but the training DataLoader is not Poisson.

    Example:
        >>> class Model(pl.LightningModule):  # doctest: +SKIP
        ...     def configure_optimizers(self):
        ...         opt = torch.optim.Adam(self.parameters(), lr=3e-3)
        ...         return make_private(self, opt, noise_multiplier=1.0, max_grad_norm=1.0)
        >>> loader = DPDataLoader.from_data_loader(DataLoader(train_set, batch_size=128))  # doctest: +SKIP
    """
    noise_multiplier = check_real("noise_multiplier", noise_multiplier, minimum=0.0, hint="e.g. 1.0")
    max_grad_norm = check_real(
        "max_grad_norm", max_grad_norm, minimum=0.0, min_inclusive=False, hint="e.g. 1.0"
    )
    check_choice("accountant", accountant, ("rdp", "gdp", "prv"))
    poisson_sampling = check_bool("poisson_sampling", poisson_sampling)
    opacus = _import_opacus()
    trainer = compat.trainer_of(pl_module)
    if trainer is None:
        raise RuntimeError(
            "make_private() needs the LightningModule attached to a Trainer; call it inside "
            "configure_optimizers():\n"
            "    def configure_optimizers(self):\n"
            "        opt = torch.optim.Adam(self.parameters(), lr=1e-3)\n"
            "        return make_private(self, opt, noise_multiplier=1.0, max_grad_norm=1.0)"
        )
    data_loader, poisson = _training_loader(trainer, poisson_sampling)
    engine = privacy_engine if privacy_engine is not None else getattr(pl_module, "privacy_engine", None)
    if engine is None:
        engine = opacus.PrivacyEngine(accountant=accountant)
    previous = pl_module.__dict__.get("_memcallbacks_dp_module")
    if previous is not None:  # a second fit: the hooks of the first would double-count
        if hasattr(previous, "_close"):
            previous._close()
        else:
            previous.remove_hooks()
    dp_module, dp_optimizer, _ = engine.make_private(
        module=pl_module,
        optimizer=optimizer,
        data_loader=data_loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=poisson,
        **kwargs,
    )
    # plain attributes (object.__setattr__): registering the wrapper as a submodule would nest the
    # module in itself
    object.__setattr__(pl_module, "_memcallbacks_dp_module", dp_module)
    object.__setattr__(pl_module, "privacy_engine", engine)
    return dp_optimizer


def _accountant_of(obj: Any) -> Any:
    """The accountant of a PrivacyEngine, or ``obj`` itself when it is an accountant."""
    if obj is None:
        return None
    acc = getattr(obj, "accountant", None)
    if acc is not None:
        return acc
    if callable(getattr(obj, "get_epsilon", None)) and hasattr(obj, "history"):
        return obj
    return None


class DPEpsilonMonitor(MemorisationCallback):
    """Logs the privacy budget spent so far, epsilon at a fixed ``delta``, from an Opacus accountant.

    The accountant comes from ``privacy_engine=`` (an ``opacus.PrivacyEngine`` or an
    accountant), else from the LightningModule's ``privacy_engine`` attribute (set by
    :func:`make_private`; set it yourself when you call Opacus directly). Epsilon is computed on
    a deep copy of the accountant, so logging never changes what the accountant reports later.

    Logged keys (every ``every_n_epochs``-th epoch, or every ``every_n_steps`` optimizer steps;
    identical on every rank):

    * ``mem/dp/epsilon``: epsilon of the (epsilon, delta)-DP guarantee after the steps taken
      so far (Opacus accountant; RDP: Mironov 2017, GDP: Dong et al. 2019, PRV: Gopi et al.
      2021). Lower is more private; skipped (not logged) for an epoch whose accountant fails.
    * ``mem/dp/delta``: the ``delta`` used.

    Run directory (``<log_dir>/memcallbacks/dp/dp.json``): accountant name, delta, whether
    the training DataLoader sampled Poisson-style, and per evaluation its ``epoch``, global ``step``,
    ``epsilon`` and ``steps`` (the optimizer steps the accountant counted).

    Resume: the accountant's history (a list of ``(noise_multiplier, sample_rate, steps)``) is
    saved in this callback's checkpoint state and restored into an empty accountant when
    training resumes, so epsilon keeps counting the steps taken before the checkpoint.
    ``delta`` defines what is measured and must match the checkpoint (else a ``ValueError``
    names both values); ``every_n_epochs`` and ``run_dir`` may change.

    Args:
        delta: target delta in ``[0, 1)``; pick it below ``1 / len(train_set)``.
        privacy_engine: an ``opacus.PrivacyEngine`` (or accountant); default
            ``pl_module.privacy_engine``.
        every_n_epochs: log every this many epochs.
        every_n_steps: log every this many optimizer steps instead (``trainer.global_step``), so a
            one-epoch run shows epsilon growing; not together with a non-default ``every_n_epochs``.
        evaluate_on_validation: log at the end of every validation run inside ``fit`` instead (also
            those ``val_check_interval`` runs mid-epoch); not together with the other two.
        run_dir: run directory root (default ``<trainer.log_dir>/memcallbacks``).
        restore_accountant: restore the accountant's history from a checkpoint on resume.
        name: tells two such callbacks in one Trainer apart: keys ``mem/dp/<metric>/<name>``,
            folder ``dp_<name>``, checkpoint state.

    Raises:
        ValueError: ``delta`` outside ``[0, 1)``.
        RuntimeError: at the start of training, when no accountant can be found.

    Example:
        >>> trainer = pl.Trainer(callbacks=[DPEpsilonMonitor(delta=1e-5)])  # doctest: +SKIP
    """

    subdir = "dp"

    def __init__(
        self,
        delta: float = 1e-5,
        *,
        privacy_engine: Any = None,
        every_n_epochs: int = 1,
        every_n_steps: int | None = None,
        evaluate_on_validation: bool = False,
        run_dir: str | os.PathLike[str] | None = None,
        restore_accountant: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(
            every_n_epochs=every_n_epochs,
            every_n_steps=every_n_steps,
            evaluate_on_validation=evaluate_on_validation,
            run_dir=run_dir,
            name=name,
        )
        self.delta = check_delta(delta)
        self.privacy_engine = privacy_engine
        self.restore_accountant = check_bool("restore_accountant", restore_accountant)
        self._epsilon_rows: list[dict[str, Any]] = []  # dp.json's history: epoch, step, epsilon, steps
        self._accountant_state: dict[str, Any] | None = None
        self._pending_accountant_state: dict[str, Any] | None = None
        self.accountant_name: str | None = None
        self.poisson: bool | None = None

    # -- finding the accountant -----------------------------------------------------------
    def find_accountant(self, pl_module: pl.LightningModule) -> Any:
        """The accountant used: from ``privacy_engine=`` or ``pl_module.privacy_engine``.

        Raises:
            RuntimeError: none found (the message shows the lines to add).
        """
        acc = _accountant_of(self.privacy_engine)
        if acc is None:
            acc = _accountant_of(getattr(pl_module, "privacy_engine", None))
        if acc is None:
            raise RuntimeError(
                "DPEpsilonMonitor found no Opacus accountant: pass `privacy_engine=` or set "
                f"`privacy_engine` on the {type(pl_module).__name__}. In configure_optimizers:\n"
                "    from memcallbacks.callbacks.dp import make_private\n"
                "    opt = torch.optim.Adam(self.parameters(), lr=1e-3)\n"
                "    return make_private(self, opt, noise_multiplier=1.0, max_grad_norm=1.0)  "
                "# sets self.privacy_engine\n"
                "or, calling Opacus yourself: `self.privacy_engine = PrivacyEngine()` before make_private, "
                "or DPEpsilonMonitor(privacy_engine=engine)."
            )
        return acc

    def read_epsilon(self, accountant: Any) -> float | None:
        """Epsilon at ``self.delta`` from a deep copy of ``accountant``; ``None`` if it fails (warned once)."""
        if len(accountant.history) == 0:
            return 0.0  # no step taken: nothing spent
        try:
            eps = float(copy.deepcopy(accountant).get_epsilon(self.delta))
            if math.isnan(eps):
                raise ValueError("the accountant returned NaN")
            return eps
        except Exception as e:  # an accountant's own failure must not stop training
            self.warn_once(
                "failure",
                f"DPEpsilonMonitor: the {self.accountant_name} accountant could not compute epsilon at "
                f"delta={self.delta:g} ({type(e).__name__}: {e}); mem/dp/epsilon is skipped for the epochs "
                "where it fails (the RDP accountant is the most robust)",
            )
            return None

    # -- Lightning hooks ------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        accountant = self.find_accountant(pl_module)
        self.__dict__["_live_accountant"] = accountant  # state_dict snapshots it: a mid-epoch checkpoint
        self.accountant_name = str(accountant.mechanism())
        pending = self._pending_accountant_state
        if self.restore_accountant and pending is not None and len(accountant.history) == 0:
            if pending.get("mechanism") == self.accountant_name and pending.get("history"):
                accountant.history = [tuple(h) for h in pending["history"]]
                rank_zero_info(
                    f"DPEpsilonMonitor: restored the {self.accountant_name} accountant's history "
                    f"({len(accountant.history)} entries) from the checkpoint"
                )
            elif pending.get("history"):
                rank_zero_warn(
                    f"DPEpsilonMonitor: the checkpoint's accountant is {pending.get('mechanism')!r}, this run's "
                    f"is {self.accountant_name!r}; its history was not restored, so epsilon restarts from 0"
                )
        self._pending_accountant_state = None
        self.poisson = is_poisson_loader(trainer.train_dataloader)
        if not self.poisson:
            rank_zero_warn(
                "DPEpsilonMonitor: the training DataLoader does not sample Poisson-style, but the "
                f"{self.accountant_name} accountant's epsilon assumes it; wrap the loader with "
                "opacus.data_loader.DPDataLoader.from_data_loader(loader) (or the datamodule with "
                "opacus.lightning.DPLightningDataModule), or read mem/dp/epsilon as nominal"
            )
        rank_zero_info(
            f"DPEpsilonMonitor: epsilon from Opacus' {self.accountant_name} accountant at delta={self.delta:g}"
        )
        if trainer.is_global_zero:
            self._save_json()

    def on_memorisation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Every epoch: snapshot the accountant's history for the checkpoint; then the cycle when due."""
        self._snapshot_accountant(self.find_accountant(pl_module))
        super().on_memorisation_epoch_end(trainer, pl_module)

    def _snapshot_accountant(self, accountant: Any) -> None:
        """Keep the accountant's history for the checkpoint (at each epoch end and each evaluation)."""
        self.accountant_name = str(accountant.mechanism())
        self._accountant_state = {
            "mechanism": self.accountant_name,
            "history": [[float(h[0]), float(h[1]), int(h[2])] for h in accountant.history],
        }

    # -- the evaluation cycle (see MemorisationCallback) ------------------------------------
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float | None:
        """Epsilon so far (``None``, skipping the epoch, when the accountant fails)."""
        accountant = self.find_accountant(pl_module)
        if self.schedule != "epochs":  # a mid-epoch checkpoint holds the accountant of this evaluation
            self._snapshot_accountant(accountant)
        eps = self.read_epsilon(accountant)
        if eps is None:
            return None
        steps = int(sum(int(h[2]) for h in accountant.history))
        row = {
            "epoch": int(trainer.current_epoch),
            "step": int(trainer.global_step),
            "epsilon": eps,
            "steps": steps,
        }
        by = "epoch" if self.schedule == "epochs" else "step"  # one row per epoch, or per global step
        self._epsilon_rows = [h for h in self._epsilon_rows if h[by] != row[by]] + [row]
        return eps

    def metrics(self, result: float) -> dict[str, float]:
        return {"mem/dp/epsilon": result, "mem/dp/delta": self.delta}

    def write_files(self, result: float) -> None:
        self._save_json()

    def _save_json(self) -> None:
        rundir.write_dp(
            self.run_dir,
            {
                "accountant": self.accountant_name,
                "delta": self.delta,
                "poisson_sampling": self.poisson,
                "history": [dict(h) for h in self._epsilon_rows],
            },
        )

    # -- state ----------------------------------------------------------------------------
    def _measured_args(self) -> dict[str, Any]:
        return {"delta": self.delta}

    def state_dict(self) -> dict[str, Any]:
        live = self.__dict__.get("_live_accountant")
        if live is not None:  # the steps of a partial epoch too (a mid-epoch checkpoint)
            self._snapshot_accountant(live)
        return {
            **self.base_state(),
            "epsilon_history": [dict(h) for h in self._epsilon_rows],
            "accountant": self._accountant_state,
            "delta": self.delta,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.load_base_state(state_dict)
        self._epsilon_rows = [
            {
                "epoch": int(h["epoch"]),
                "step": int(h.get("step", -1)),
                "epsilon": float(h["epsilon"]),
                "steps": int(h["steps"]),
            }
            for h in state_dict.get("epsilon_history", [])
        ]
        acc = state_dict.get("accountant")
        self._accountant_state = acc
        self._pending_accountant_state = dict(acc) if acc else None
