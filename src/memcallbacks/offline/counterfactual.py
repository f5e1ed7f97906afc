"""Counterfactual memorisation across shadow runs, as library functions (``memcallbacks memorisation``).

Reads the ``shadow/`` folders that :class:`memcallbacks.ShadowScoreRecorder` wrote in ``R >= 2``
run directories over one pool (each run trained on its own seeded random subset) and computes, for
every pool sample ``i``, Feldman and Zhang's counterfactual memorisation (NeurIPS 2020; Zhang et
al., NeurIPS 2023 for language models)::

    mem(i) = mean performance of the runs that trained on i - mean performance of those that did not

(:func:`memcallbacks.metrics.counterfactual_memorisation`). The performance is the end-of-training
correctness the recorder saved for classifiers, and for language models minus the loss (the recorder's
``neg_loss`` score). ``signal="token_accuracy"`` reads a ``token_accuracy`` array from ``scores.npz``;
:class:`memcallbacks.ShadowScoreRecorder` does not write one, so it applies only to score files that
hold it (otherwise a clear error).

When a run directory also holds a :class:`memcallbacks.LossTrajectoryTracker` folder
(``trajectory/statistics.npz``), the Spearman correlation between ``mem`` and each in-run signal of
that run's training samples is reported: how far the cheap live signal is from the expensive
definition on this data. ``mem`` is then estimated *without* that run (leave-one-out), so the
run's own end-of-training correctness does not leak into the truth it is compared with.

**Mapping trajectory rows to pool samples.** A trajectory row is a sample id (``sample_ids`` in
``statistics.npz``). If the statistics have one row per pool sample and every visited row is a
sample the run trained on, the ids are pool positions (the pool was wrapped in
:class:`~memcallbacks.IndexedDataset` before the run's subset was taken). Otherwise the ids must be
positions in the run's training set ``IndexedDataset(recorder.train_dataset)``, whose ``j``-th item
is the ``j``-th included pool sample in ascending pool order: pool id = ``flatnonzero(inclusion)[j]``.
Anything else is refused.

Outputs (``--out``): ``memorisation.npz`` (``mem``, ``se``, ``mean_in``, ``mean_out``, ``n_in``,
``n_out``), ``memorisation.json`` (settings, summary, the most memorised pool ids, the proxy
correlations), ``mem_histogram.png`` and ``memorisation.md`` (a report section). Labels appear only
with ``--log-per-sample`` (and only if the runs recorded them).

Example:
    >>> result = run_memorisation([f"runs/run{i}" for i in range(16)])  # doctest: +SKIP
    >>> print(result.proxy_table())  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from memcallbacks.metrics.counterfactual import (
    CounterfactualResult,
    SpearmanResult,
    counterfactual_memorisation,
    spearman,
)
from memcallbacks.metrics.dynamics import top_k
from memcallbacks.offline.shadow_runs import AttackInputError, ShadowRun, load_shadow_run
from memcallbacks.rundir import (
    MAX_FIGURE_BYTES,
    RunDirectory,
    RunDirectoryError,
    read_run_bytes,
    read_run_json,
)
from memcallbacks.utilities import fileio
from memcallbacks.utilities.validation import check_bool, check_choice, check_int

__all__ = [
    "PROXIES",
    "SIGNALS",
    "SIGNAL_TEXT",
    "DIGESTED_OUTPUTS",
    "MemorisationInputError",
    "MemorisationResult",
    "expected_signs",
    "proxy_signals",
    "check_outputs",
    "run_memorisation",
    "trajectory_pool_ids",
    "write_outputs",
]

#: per-sample performance the estimator can use (``signal=``); "auto" picks by the recorded score kind
SIGNALS = ("auto", "correct", "token_accuracy", "score")
SIGNAL_TEXT = {
    "correct": "end-of-training correctness (0/1)",
    "token_accuracy": "end-of-training per-token accuracy",
    "score": "end-of-training recorded score",
}
#: in-run signals compared with mem: name -> sign of the correlation the literature leads one to expect
PROXIES: dict[str, str] = {
    "mean_loss": "+",
    "learned_epoch": "+",
    "learning_speed": "-",
    "forgetting_events": "+",
    "confidence": "-",
    "min_loss": "+",  # the LM score; for classifiers the expected sign is "-" (see proxy_signals)
}


class MemorisationInputError(ValueError):
    """Run directories whose counterfactual memorisation cannot be computed; the message names the directory."""


@dataclass(frozen=True)
class _Run:
    shadow: ShadowRun
    performance: np.ndarray = field(repr=False)
    labels: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class MemorisationResult:
    """Counterfactual memorisation over a set of shadow runs, with the in-run proxy correlations.

    Attributes:
        estimate: the per-sample :class:`~memcallbacks.metrics.CounterfactualResult`.
        runs: the runs' ``shadow/`` folders, in the order given.
        signal: the performance used (``"correct"``, ``"token_accuracy"`` or ``"score"``).
        score_kind: the recorded score kind (``"logit_confidence"``, ``"neg_loss"``, ``"custom"``).
        fingerprint: the pool fingerprint shared by every run.
        proxies: ``{run folder: {proxy name: SpearmanResult}}`` for each run with a trajectory.
        expected: ``{proxy name: "+" or "-"}``, the sign the literature leads one to expect.
        labels: the pool's labels as recorded by the runs, or ``None``.
    """

    estimate: CounterfactualResult
    runs: list[Path]
    signal: str
    score_kind: str
    fingerprint: str
    proxies: dict[str, dict[str, SpearmanResult]]
    expected: dict[str, str]
    labels: np.ndarray | None = field(default=None, repr=False)

    def most_memorised(self, k: int = 20) -> np.ndarray:
        """Pool ids of the ``k`` highest ``mem`` (smaller standard error first among ties; NaN never listed)."""
        k = check_int("k", k, minimum=0, hint="e.g. k=20")
        finite = int(np.isfinite(self.estimate.mem).sum())
        se = np.nan_to_num(self.estimate.se, nan=np.inf)
        return top_k(self.estimate.mem, min(k, finite), tiebreak=-se)

    def proxy_summary(self) -> dict[str, dict[str, Any]]:
        """Per proxy: expected sign, mean/min/max rho over the runs with a trajectory, mean pairs per run."""
        out: dict[str, dict[str, Any]] = {}
        for name, sign in self.expected.items():
            found = [per_run[name] for per_run in self.proxies.values() if name in per_run]
            if not found:
                continue
            rhos = np.array([r.rho for r in found], dtype=np.float64)
            finite = rhos[np.isfinite(rhos)]
            out[name] = {
                "expected": sign,
                "rho_mean": float(finite.mean()) if finite.size else float("nan"),
                "rho_min": float(finite.min()) if finite.size else float("nan"),
                "rho_max": float(finite.max()) if finite.size else float("nan"),
                "runs": len(found),
                "n_mean": float(np.mean([r.n for r in found])),
            }
        return out

    def to_json(self, *, top: int = 20, log_per_sample: bool = False) -> dict[str, Any]:
        """A plain-JSON summary (what ``memorisation.json`` holds); labels only with ``log_per_sample``."""
        log_per_sample = check_bool("log_per_sample", log_per_sample)
        e = self.estimate
        finite = e.mem[np.isfinite(e.mem)]
        rows = []
        for i in self.most_memorised(top):
            row: dict[str, Any] = {
                "pool_id": int(i),
                "mem": float(e.mem[i]),
                "se": float(e.se[i]),
                "n_in": int(e.n_in[i]),
                "n_out": int(e.n_out[i]),
            }
            if log_per_sample and self.labels is not None:
                row["label"] = self.labels[i].item()
            rows.append(row)
        return {
            "runs": [str(p) for p in self.runs],
            "settings": {
                "num_runs": len(self.runs),
                "pool_size": e.num_samples,
                "signal": self.signal,
                "score_kind": self.score_kind,
                "fingerprint": self.fingerprint,
                "proxy_mem": "leave-one-out (mem estimated without the proxy's own run)",
            },
            "summary": {
                "mem_mean": float(finite.mean()) if finite.size else float("nan"),
                "mem_median": float(np.median(finite)) if finite.size else float("nan"),
                "num_undefined": e.num_undefined,
                "num_never_in": e.num_never_in,
                "num_never_out": e.num_never_out,
            },
            "most_memorised": rows,
            "proxies": {
                "summary": self.proxy_summary(),
                "per_run": {
                    run: {name: {"rho": r.rho, "p_value": r.p_value, "n": r.n} for name, r in per.items()}
                    for run, per in self.proxies.items()
                },
            },
        }

    def table(self, k: int = 10, *, log_per_sample: bool = False) -> str:
        """The ``k`` most memorised pool samples as aligned text (labels only with ``log_per_sample``)."""
        e = self.estimate
        show_label = check_bool("log_per_sample", log_per_sample) and self.labels is not None
        head = f"{'pool id':>8} {'mem':>7} {'se':>7} {'n_in':>5} {'n_out':>5}" + (
            f" {'label':>8}" if show_label else ""
        )
        lines = [head, "-" * len(head)]
        for i in self.most_memorised(k):
            line = f"{int(i):>8} {e.mem[i]:>7.3f} {e.se[i]:>7.3f} {int(e.n_in[i]):>5} {int(e.n_out[i]):>5}"
            if show_label:
                assert self.labels is not None
                line += f" {self.labels[i].item()!s:>8}"
            lines.append(line)
        return "\n".join(lines)

    def proxy_table(self) -> str:
        """Spearman rho of each in-run signal against ``mem`` (mean and range over the runs with a trajectory)."""
        summary = self.proxy_summary()
        if not summary:
            return "no run directory holds a LossTrajectoryTracker folder (trajectory/statistics.npz): no proxies"
        head = f"{'in-run signal':<18} {'expected':>8} {'rho':>7} {'range':>15} {'runs':>5} {'n/run':>7}"
        lines = [head, "-" * len(head)]
        for name, s in summary.items():
            span = f"{s['rho_min']:.3f}..{s['rho_max']:.3f}"
            lines.append(
                f"{name:<18} {s['expected']:>8} {s['rho_mean']:>7.3f} {span:>15} {s['runs']:>5} {s['n_mean']:>7.0f}"
            )
        return "\n".join(lines)


# -- loading ------------------------------------------------------------------------------------
def _performance(run: ShadowRun, extra: Mapping[str, np.ndarray], signal: str) -> np.ndarray:
    where = str(run.path)
    if signal == "correct":
        if run.correct is None:
            raise MemorisationInputError(
                f"{where!r}: the run recorded no correctness (a custom `score` without it?); pass --signal score "
                "to use the recorded scores, or record correctness"
            )
        return run.correct.astype(np.float64)
    if signal == "token_accuracy":
        if "token_accuracy" not in extra:
            raise MemorisationInputError(
                f"{where!r}: the run recorded no per-token accuracy (`ShadowScoreRecorder` does not record it: it "
                "saves correctness for classifiers and the `neg_loss` score for language models; `token_accuracy` "
                "is read only from a scores.npz that holds such an array); pass --signal score (minus the loss) "
                "or --signal auto"
            )
        values = np.asarray(extra["token_accuracy"], dtype=np.float64)
    else:
        values = run.scores
    if values.shape != run.inclusion.shape or not np.isfinite(values).all():
        raise MemorisationInputError(
            f"{where!r}: `{signal}` has shape {values.shape} or non-finite values for a pool of "
            f"{run.inclusion.size} samples; re-record the run"
        )
    return values


def _auto_signal(runs: Sequence[ShadowRun], extras: Sequence[Mapping[str, np.ndarray]]) -> str:
    kind = runs[0].score_kind
    if kind == "logit_confidence" or (kind == "custom" and all(r.correct is not None for r in runs)):
        return "correct"
    if all("token_accuracy" in x for x in extras):
        return "token_accuracy"
    return "score"


def _load(run_dirs: Iterable[str | os.PathLike[str]], signal: str) -> tuple[list[_Run], str]:
    paths = list(run_dirs)
    if len(paths) < 2:
        named = f" ({str(paths[0])!r})" if paths else ""
        raise MemorisationInputError(
            f"counterfactual memorisation needs at least 2 shadow runs over one pool, got {len(paths)}{named}; "
            "train more runs with --run-index 1, 2, ... (16 or more give usable estimates)"
        )
    shadows: list[ShadowRun] = []
    seen: dict[Path, str] = {}
    for path in paths:
        try:
            run = load_shadow_run(path)
        except AttackInputError as e:
            raise MemorisationInputError(str(e)) from e
        key = run.path.resolve()
        if key in seen:
            raise MemorisationInputError(
                f"{str(path)!r} and {seen[key]!r} are the same run directory; pass each shadow run once"
            )
        seen[key] = str(path)
        shadows.append(run)
    first = shadows[0]
    for run in shadows[1:]:
        if run.fingerprint != first.fingerprint or run.inclusion.size != first.inclusion.size:
            raise MemorisationInputError(
                f"{str(run.path)!r} was trained from another pool (fingerprint {run.fingerprint}, "
                f"{run.inclusion.size} samples) than {str(first.path)!r} (fingerprint {first.fingerprint}, "
                f"{first.inclusion.size} samples); every run must use the same pool in the same order"
            )
        if run.score_kind != first.score_kind:
            raise MemorisationInputError(
                f"{str(run.path)!r} recorded {run.score_kind!r} scores but {str(first.path)!r} recorded "
                f"{first.score_kind!r}: the runs measured different things; record every run with the same `score`"
            )
    extras = [dict(r.extras) for r in shadows]
    _check_labels(shadows, extras)
    epochs = {int(x["epochs_completed"]) for x in extras if "epochs_completed" in x}
    if len(epochs) > 1:
        warnings.warn(
            f"the shadow runs trained for different numbers of epochs ({sorted(epochs)}): mem compares models "
            "trained differently as well as with and without each sample; train every run the same way",
            UserWarning,
            stacklevel=3,
        )
    chosen = _auto_signal(shadows, extras) if signal == "auto" else signal
    runs = [
        _Run(shadow=r, performance=_performance(r, x, chosen), labels=x.get("labels"))
        for r, x in zip(shadows, extras, strict=True)
    ]
    return runs, chosen


def _check_labels(runs: Sequence[ShadowRun], extras: Sequence[Mapping[str, np.ndarray]]) -> None:
    """Runs that recorded the pool's labels (or a label fingerprint) must agree on them."""
    for key in ("label_fingerprint", "labels"):
        holders = [(r, x[key]) for r, x in zip(runs, extras, strict=True) if key in x]
        if len(holders) < 2:
            continue
        (ref_run, ref), rest = holders[0], holders[1:]
        for run, value in rest:
            if value.shape != ref.shape or not np.array_equal(value, ref):
                raise MemorisationInputError(
                    f"{str(run.path)!r} trained with other labels than {str(ref_run.path)!r} (their `{key}` "
                    "differ): the runs used different label sets (another label-noise seed or label mapping?); "
                    "use one labelled pool for every run"
                )


# -- proxies ------------------------------------------------------------------------------------
def proxy_signals(statistics: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The in-run signals of a trajectory's ``statistics.npz``, one float64 value per row.

    * ``mean_loss``: the mean loss over the recorded epochs (``mean``);
    * ``learned_epoch``: the first recorded epoch from which the sample stays correct
      (``learned_epoch``); a sample never learned counts as learned after the last recorded
      epoch (value = number of recorded epochs), the slowest, as in Jiang et al.'s learning
      speed (ICML 2021);
    * ``learning_speed``: the fraction of recorded epochs the sample was classified correctly
      (``correctness``), Jiang et al.'s cumulative-accuracy proxy: high = learned early;
    * ``forgetting_events``: correct-to-incorrect transitions (Toneva et al., ICLR 2019);
    * ``confidence``: the mean gold-label probability ``exp(-loss)`` (Swayamdipta et al., 2020);
    * ``min_loss``: minus the lowest loss reached, the trajectory tracker's LM score.

    The correctness-based signals exist only when the trajectory recorded correctness.

    Args:
        statistics: the arrays of ``statistics.npz``.

    Returns:
        ``{name: values}`` for the signals the statistics support; NaN where a row was never visited.
    """
    seen = np.asarray(statistics["count"]) > 0
    out: dict[str, np.ndarray] = {}

    def put(name: str, values: Any) -> None:
        out[name] = np.where(seen, np.asarray(values, dtype=np.float64), np.nan)

    put("mean_loss", statistics["mean"])
    if "learned_epoch" in statistics:
        learned = np.asarray(statistics["learned_epoch"], dtype=np.float64)
        put("learned_epoch", np.where(learned < 0, float(len(statistics["epochs"])), learned))
    if "correctness" in statistics:
        put("learning_speed", statistics["correctness"])
    if "forgetting" in statistics:
        put("forgetting_events", statistics["forgetting"])
    if "confidence" in statistics:
        put("confidence", statistics["confidence"])
    if "min" in statistics:
        put("min_loss", -np.asarray(statistics["min"], dtype=np.float64))
    return out


def expected_signs(*, language_model: bool) -> dict[str, str]:
    """The correlation sign with ``mem`` the literature leads one to expect, per proxy.

    Slowly learned, often forgotten, low-confidence, high-loss samples are the memorised ones
    (Feldman & Zhang 2020; Jiang et al. 2021; Toneva et al. 2019). ``min_loss`` (minus the lowest
    loss) is high for a sequence a language model memorised, so ``+`` for language models; for a
    classifier a low lowest loss marks an easy sample, so ``-``.
    """
    signs = dict(PROXIES)
    if not language_model:
        signs["min_loss"] = "-"
    return signs


def trajectory_pool_ids(
    sample_ids: np.ndarray, visited: np.ndarray, inclusion: np.ndarray, *, where: str
) -> np.ndarray:
    """Pool position of every trajectory row (see the module docstring for the rule).

    Raises:
        MemorisationInputError: the ids fit neither rule; the message names ``where``.
    """
    ids = np.asarray(sample_ids, dtype=np.int64)
    included = np.flatnonzero(inclusion)
    used = ids[visited]
    in_pool = used.size == 0 or (used.min() >= 0 and used.max() < inclusion.size)
    if ids.size == inclusion.size and in_pool and inclusion[used].all():
        return ids
    if used.size == 0 or (used.min() >= 0 and used.max() < included.size):
        pool = np.full(ids.shape, -1, dtype=np.int64)
        ok = (ids >= 0) & (ids < included.size)
        pool[ok] = included[ids[ok]]
        return pool
    raise MemorisationInputError(
        f"{where!r}: the trajectory's sample ids (up to {int(used.max())}, {ids.size} rows) are neither pool "
        f"positions of samples this run trained on nor positions in its training set of {included.size} "
        "samples; wrap `recorder.train_dataset` in IndexedDataset (or the pool before taking the subset)"
    )


def _proxies_of_run(run: _Run, loo_mem: np.ndarray) -> dict[str, SpearmanResult] | None:
    root = run.shadow.path.parent
    reader = RunDirectory(root)
    folders = reader.folders("trajectory")
    if not folders:
        return None
    try:
        traj = reader.trajectory(folders[0])
    except (RunDirectoryError, OSError) as e:
        raise MemorisationInputError(f"{str(root)!r}: {e}") from e
    if traj is None:
        return None
    stats = traj.statistics
    visited = np.asarray(stats["count"]) > 0
    pool_ids = trajectory_pool_ids(traj.sample_ids, visited, run.shadow.inclusion, where=str(traj.folder))
    mapped = pool_ids >= 0
    truth = np.full(pool_ids.shape, np.nan)
    truth[mapped] = loo_mem[pool_ids[mapped]]
    truth[~visited] = np.nan
    signals = proxy_signals(stats)
    return {name: spearman(values, truth) for name, values in signals.items()}


def _leave_one_out(
    perf: np.ndarray, inc: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Totals from which ``mem`` without run ``r`` is O(N): sums and counts of each side."""
    w = inc.astype(np.float64)
    return (perf * w).sum(axis=0), w.sum(axis=0), (perf * (1.0 - w)).sum(axis=0), (1.0 - w).sum(axis=0)


def run_memorisation(
    run_dirs: Iterable[str | os.PathLike[str]],
    *,
    signal: str = "auto",
) -> MemorisationResult:
    """Counterfactual memorisation of every pool sample from shadow runs, and the in-run proxy correlations.

    Args:
        run_dirs: the runs' directories (a run directory, its ``memcallbacks`` folder, its ``shadow``
            folder, or a Lightning ``version_N`` folder above it), at least 2, over one pool.
        signal: the per-sample performance: ``"auto"`` (correctness for classifiers; per-token
            accuracy for language models when recorded, else minus the loss), ``"correct"``,
            ``"token_accuracy"`` or ``"score"``.

    Returns:
        A :class:`MemorisationResult`.

    Raises:
        MemorisationInputError: fewer than 2 runs, runs over different pools (fingerprint) or with
            different labels or score kinds, a run without inclusion mask or scores, a trajectory
            whose sample ids cannot be mapped to the pool; the message names the run directory.
        ValueError: an unknown ``signal``.

    Example:
        >>> result = run_memorisation(["runs/run0", "runs/run1", "runs/run2"])  # doctest: +SKIP
        >>> result.estimate.mem.shape  # doctest: +SKIP
        (1797,)
    """
    check_choice("signal", signal, SIGNALS)
    runs, chosen = _load(run_dirs, signal)
    perf = np.stack([r.performance for r in runs])
    inc = np.stack([r.shadow.inclusion for r in runs])
    estimate = counterfactual_memorisation(perf, inc)
    language_model = runs[0].shadow.score_kind == "neg_loss"
    s_in, n_in, s_out, n_out = _leave_one_out(perf, inc)
    proxies: dict[str, dict[str, SpearmanResult]] = {}
    for r, run in enumerate(runs):
        w = inc[r].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            loo = (s_in - perf[r] * w) / (n_in - w) - (s_out - perf[r] * (1.0 - w)) / (n_out - (1.0 - w))
        found = _proxies_of_run(run, loo)
        if found is not None:
            proxies[str(run.shadow.path)] = found
    labels = next((r.labels for r in runs if r.labels is not None), None)
    return MemorisationResult(
        estimate=estimate,
        runs=[r.shadow.path for r in runs],
        signal=chosen,
        score_kind=runs[0].shadow.score_kind,
        fingerprint=runs[0].shadow.fingerprint,
        proxies=proxies,
        expected=expected_signs(language_model=language_model),
        labels=labels,
    )


# -- outputs ------------------------------------------------------------------------------------
def _histogram_png(result: MemorisationResult) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    mem = result.estimate.mem[np.isfinite(result.estimate.mem)]
    fig = Figure(figsize=(5.0, 3.6))
    ax = fig.add_subplot()
    if mem.size:
        ax.hist(mem, bins=min(60, max(10, mem.size // 20)), color="tab:blue")
    ax.set_yscale("log")
    ax.set_xlabel(f"mem = in-run minus out-of-run mean {result.signal}")
    ax.set_ylabel("pool samples")
    undefined = result.estimate.num_undefined
    ax.set_title(
        f"Counterfactual memorisation, {len(result.runs)} runs"
        + (f" ({undefined} samples undefined)" if undefined else "")
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return buf.getvalue()


def _markdown(result: MemorisationResult, summary: Mapping[str, Any], *, log_per_sample: bool) -> str:
    s = summary["summary"]
    lines = [
        "## Counterfactual memorisation",
        "",
        f"{len(result.runs)} shadow runs over a pool of {result.estimate.num_samples} samples "
        f"(fingerprint `{result.fingerprint}`); performance: {SIGNAL_TEXT[result.signal]}.",
        "",
        f"- mean mem: {s['mem_mean']:.4f}, median {s['mem_median']:.4f}",
        f"- undefined (NaN): {s['num_undefined']} samples ({s['num_never_in']} in no run, "
        f"{s['num_never_out']} in every run)",
        "",
        "![mem histogram](mem_histogram.png)",
        "",
        "Most memorised pool samples:",
        "",
        "```",
        result.table(10, log_per_sample=log_per_sample),
        "```",
        "",
        "In-run signals against mem (Spearman rho; mem estimated without the signal's own run):",
        "",
        "```",
        result.proxy_table(),
        "```",
        "",
    ]
    return "\n".join(lines)


#: the outputs of :func:`write_outputs` whose SHA-256 ``memorisation.json`` lists (under ``files``)
DIGESTED_OUTPUTS = ("memorisation.npz", "mem_histogram.png", "memorisation.md")


def write_outputs(
    result: MemorisationResult, out: str | os.PathLike[str], *, top: int = 20, log_per_sample: bool = False
) -> dict[str, Path]:
    """Write ``memorisation.npz``, ``mem_histogram.png``, ``memorisation.md`` and, last,
    ``memorisation.json`` into ``out``.

    Each file is replaced atomically, and ``memorisation.json`` (written last) lists the SHA-256 of
    the other three under ``files``: after a crash or a full disk between two writes,
    :func:`check_outputs` tells that the folder mixes two runs of ``memcallbacks memorisation``.
    """
    folder = Path(out)
    e = result.estimate
    summary = result.to_json(top=top, log_per_sample=log_per_sample)
    paths = {
        "npz": fileio.save_npz(
            folder / "memorisation.npz",
            mem=e.mem,
            se=e.se,
            mean_in=e.mean_in,
            mean_out=e.mean_out,
            n_in=e.n_in,
            n_out=e.n_out,
            fingerprint=np.array(result.fingerprint),
            signal=np.array(result.signal),
        ),
        "png": fileio.atomic_write_bytes(folder / "mem_histogram.png", _histogram_png(result)),
        "markdown": fileio.atomic_write_bytes(
            folder / "memorisation.md", _markdown(result, summary, log_per_sample=log_per_sample).encode()
        ),
    }
    summary["files"] = {name: _sha256(folder / name) for name in DIGESTED_OUTPUTS}
    paths["json"] = fileio.save_json(folder / "memorisation.json", summary)
    return paths


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_outputs(out: str | os.PathLike[str]) -> dict[str, Any]:
    """``memorisation.json`` of a :func:`write_outputs` folder, after checking that the other outputs
    are the ones it was written with.

    Raises:
        RunDirectoryError: ``memorisation.json`` is unreadable or lists no digests, or a file is
            missing or differs from its digest (a run of ``memcallbacks memorisation`` interrupted,
            or two runs writing one folder); the message names the file.
    """
    folder = Path(out)
    summary = read_run_json(folder / "memorisation.json")
    files = summary.get("files")
    if not isinstance(files, dict):
        raise RunDirectoryError(
            folder / "memorisation.json", "lacks the object 'files' (the outputs' SHA-256)"
        )
    for name in DIGESTED_OUTPUTS:
        data = read_run_bytes(folder / name, MAX_FIGURE_BYTES * 64)
        if hashlib.sha256(data).hexdigest() != files.get(name):
            raise RunDirectoryError(
                folder / name,
                "is not the file memorisation.json was written with (its SHA-256 differs): `memcallbacks "
                "memorisation` was interrupted, or two runs wrote this folder",
                fix="re-run `memcallbacks memorisation` into this folder",
            )
    return summary
