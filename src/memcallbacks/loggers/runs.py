"""Opening and closing tracker runs outside training (``memcallbacks attack --log``).

Inside training the Trainer owns its loggers; an offline analysis opens its own with
:func:`make_loggers`, hands them to :func:`memcallbacks.offline.attack.log_attack_results`, and
finishes them with :func:`close_loggers`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from memcallbacks.loggers.dispatch import TrackerWarning
from memcallbacks.utilities.validation import check_choice

__all__ = ["TRACKERS", "close_loggers", "logged_where", "make_loggers", "quiet_trackers"]

#: the experiment trackers :func:`make_loggers` opens
TRACKERS = ("wandb", "tensorboard", "mlflow", "csv")


def _opening_warning(who: str, what: str, error: BaseException) -> None:
    warnings.warn(
        f"memcallbacks attack: {who} failed to {what} ({type(error).__name__}: {error}); "
        "attack.json keeps the numbers",
        TrackerWarning,
        stacklevel=3,
    )


def make_loggers(
    names: Sequence[str],
    folder: str | os.PathLike[str],
    *,
    project: str,
    run_name: str,
    job_type: str = "attack",
) -> tuple[list[Any], int]:
    """Open one Lightning logger per tracker name under ``folder`` (what ``memcallbacks attack --log`` does).

    W&B opens a run in ``<folder>/wandb`` (``WANDB_MODE=offline`` needs no account), TensorBoard and
    CSV write to ``<folder>/tensorboard|csv/<run_name>``, MLflow to ``$MLFLOW_TRACKING_URI`` or
    ``sqlite:///<folder>/mlflow.db`` (experiment ``project``). A tracker that cannot be opened is
    warned about (:class:`~memcallbacks.loggers.TrackerWarning`) and counted.

    Args:
        names: tracker names, each one of :data:`TRACKERS`.
        folder: where the trackers write.
        project: the W&B project / MLflow experiment.
        run_name: the tracker run's name.
        job_type: the W&B job type.

    Returns:
        ``(loggers, failures)``.

    Raises:
        ValueError: an unknown tracker name.

    Example:
        >>> loggers, failures = make_loggers(["csv"], "logs", project="p", run_name="attack")  # doctest: +SKIP
        >>> close_loggers(loggers)  # doctest: +SKIP
        0
    """
    from pytorch_lightning import loggers as L

    root = Path(folder)
    opened: list[Any] = []
    failures = 0
    for name in names:
        check_choice("names", name, TRACKERS)
        try:
            if name == "csv":
                opened.append(L.CSVLogger(str(root / "csv"), name=run_name))
            elif name == "tensorboard":
                opened.append(
                    L.TensorBoardLogger(str(root / "tensorboard"), name=run_name, default_hp_metric=False)
                )
            elif name == "wandb":
                import wandb

                root.mkdir(parents=True, exist_ok=True)
                run = wandb.init(project=project, name=run_name, dir=str(root), job_type=job_type)
                opened.append(L.WandbLogger(experiment=run, save_dir=str(root)))
            else:  # mlflow
                uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow.db').resolve()}"
                root.mkdir(parents=True, exist_ok=True)
                opened.append(
                    L.MLFlowLogger(
                        experiment_name=project,
                        run_name=run_name,
                        tracking_uri=uri,
                        artifact_location=None
                        if os.environ.get("MLFLOW_TRACKING_URI")
                        else str((root / "mlflow-artifacts").resolve()),
                    )
                )
        except Exception as e:  # a tracker that cannot open must not lose the results
            _opening_warning(name, "open its run", e)
            failures += 1
    return opened, failures


def close_loggers(loggers: Sequence[Any]) -> int:
    """Finalize loggers opened by :func:`make_loggers` (and finish the W&B run); returns the failures."""
    failures = 0
    for logger in loggers:
        try:
            logger.finalize("success")
            if "WandbLogger" in {c.__name__ for c in type(logger).__mro__}:
                logger.experiment.finish()
        except Exception as e:
            _opening_warning(type(logger).__name__, "close its run", e)
            failures += 1
    return failures


@contextlib.contextmanager
def quiet_trackers() -> Iterator[None]:
    """MLflow's and Lightning's start-up notices off ("Creating initial MLflow database tables")."""
    names = {
        "mlflow": logging.WARNING,
        "alembic": logging.WARNING,
        "pytorch_lightning.loggers.mlflow": logging.ERROR,
    }
    levels = {n: logging.getLogger(n).level for n in names}
    with contextlib.suppress(ImportError):
        import mlflow  # noqa: F401 - configures its logger on import: quieten it afterwards
    for n, level in names.items():
        logging.getLogger(n).setLevel(level)
    try:
        yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def logged_where(logger: Any) -> str:
    """Where ``logger`` writes, in words (``""`` when it cannot tell)."""
    names = {c.__name__ for c in type(logger).__mro__}
    try:
        if "WandbLogger" in names:
            return f"W&B run {logger.experiment.dir}"
        if "MLFlowLogger" in names:
            return f"MLflow run {logger.run_id} at {logger._tracking_uri}"
        return f"{type(logger).__name__} {logger.log_dir}"
    except Exception:  # a description only
        return ""
