"""Offline report: PNG figures, one self-contained HTML page and a Markdown summary.

Reads only the run directory the callbacks wrote (no model, no tracker): the
``trajectory/``, ``membership/``, ``canary/``, ``audit/`` and ``dp/`` folders and
``stopping.json``, whichever exist. Figures (matplotlib, Agg backend):

- the data map (Swayamdipta et al. 2020): mean loss vs variability per training sample,
  coloured by forgetting events (Toneva et al. 2019) when correctness was recorded, canaries
  and the most memorised samples marked;
- exposure vs repetition count, one line per evaluated epoch (Carlini et al. 2019);
- the ROC of the loss-threshold membership attack on log-log axes with TPR at 0.1% and 1%
  FPR marked (Carlini et al. 2022);
- loss gap and attack AUC over epochs;
- epsilon over epochs: DP-SGD accountant and the one-run audit lower bound (Steinke et al. 2023).

Example:
    >>> paths = build_report("lightning_logs/version_0/memcallbacks")  # doctest: +SKIP
    >>> paths["html"]  # doctest: +SKIP
    PosixPath('lightning_logs/version_0/memcallbacks/report/report.html')
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from memcallbacks import _io

__all__ = ["build_report", "find_run_dir"]


@dataclass
class _Section:
    title: str
    lines: list[str] = field(default_factory=list)  # Markdown bullet lines (plain text)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (file name, caption)


def find_run_dir(path: str | os.PathLike[str]) -> Path:
    """The memcallbacks run directory at or below ``path`` (a folder holding the callbacks' folders).

    Below a parent of several runs (``lightning_logs/version_*``), the most recently written one.

    Raises:
        FileNotFoundError: ``path`` does not exist, or nothing the callbacks write was found there.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"`run_dir` {str(root)!r} does not exist")
    markers = ("trajectory", "membership", "canary", "audit", "dp", "stopping.json")
    if any((root / m).exists() for m in markers):
        return root
    if (root / "memcallbacks").is_dir():
        return find_run_dir(root / "memcallbacks")
    runs = [p for p in root.rglob("memcallbacks") if p.is_dir() and any((p / m).exists() for m in markers)]
    if runs:
        return max(runs, key=lambda p: max(f.stat().st_mtime for f in p.rglob("*")))
    raise FileNotFoundError(
        f"`run_dir` {str(root)!r} holds no memcallbacks output (expected folders like trajectory/, "
        "membership/, canary/ or stopping.json); pass the folder the callbacks wrote, by default "
        "<trainer.log_dir>/memcallbacks"
    )


def build_report(
    run_dir: str | os.PathLike[str], *, out: str | os.PathLike[str] | None = None
) -> dict[str, Path]:
    """Write the figures, ``report.html`` (figures embedded) and ``summary.md`` for a run directory.

    Args:
        run_dir: the folder the callbacks wrote (default ``<trainer.log_dir>/memcallbacks``), or
            a parent of it.
        out: output folder; default ``<run_dir>/report``.

    Returns:
        Paths: ``{"html": ..., "markdown": ..., "figures": [...]}`` (figures as a list of paths
        is under the key ``"figure:<name>"`` too).

    Raises:
        FileNotFoundError: ``run_dir`` holds no memcallbacks output.
        ImportError: matplotlib (the ``report`` extra) is not installed.
    """
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(
            "the report draws its figures with matplotlib: pip install 'memcallbacks[report]'"
        ) from e

    matplotlib.use("Agg", force=True)

    root = find_run_dir(run_dir)
    out_dir = Path(out) if out is not None else root / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    sections: list[_Section] = []
    builders: list[Callable[[Path, Path], _Section | None]] = [
        _stopping_section,
        _canary_section,
        _membership_section,
        _trajectory_section,
        _privacy_section,
    ]
    for build in builders:
        try:
            section = build(root, out_dir)
        except Exception as e:  # one broken file must not hide the rest of the report
            section = _Section(build.__name__.strip("_").replace("_section", "").title())
            section.lines.append(f"could not be drawn: {type(e).__name__}: {e}")
        if section is not None:
            sections.append(section)
    if not sections:
        sections.append(_Section("Nothing recorded", ["the run directory holds no evaluations yet"]))

    md = _markdown(root, sections)
    md_path = _io.atomic_write_bytes(out_dir / "summary.md", md.encode())
    html_path = _io.atomic_write_bytes(out_dir / "report.html", _html(root, out_dir, sections).encode())
    result: dict[str, Any] = {"html": html_path, "markdown": md_path, "figures": []}
    for s in sections:
        for name, _ in s.figures:
            result["figures"].append(out_dir / name)
    return result


# -- sections ------------------------------------------------------------------------------
def _fmt(x: Any, digits: int = 3) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(v):
        return "n/a"
    return f"{v:.{digits}f}"


def _save(fig: Any, out_dir: Path, name: str) -> str:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    _io.atomic_write_bytes(out_dir / name, buf.getvalue())
    return name


def _stopping_section(root: Path, out_dir: Path) -> _Section | None:
    path = root / "stopping.json"
    if not path.exists():
        return None
    info = _io.load_json(path)
    s = _Section("Early-stopping decision")
    reason = info.get("reason")
    if info.get("stopped", reason is not None) and reason:
        s.lines.append(f"**stopped** at epoch {info.get('stopped_epoch')}: {reason}")
    else:
        s.lines.append("training was not stopped: no leakage threshold was crossed")
    if info.get("restored_epoch") is not None:
        s.lines.append(
            f"weights restored from epoch {info['restored_epoch']} (last evaluation below every threshold)"
        )
    conditions = info.get("conditions")
    if conditions:
        for c in conditions:
            if isinstance(c, dict):
                s.lines.append(
                    f"condition: `{c.get('monitor')}` {'>' if c.get('mode', 'max') == 'max' else '<'} "
                    f"{c.get('threshold')} (patience {c.get('patience', 1)})"
                )
    return s


def _canary_section(root: Path, out_dir: Path) -> _Section | None:
    path = root / "canary" / "exposure.npz"
    if not path.exists():
        return None
    import matplotlib.pyplot as plt

    d = _io.load_npz(path)
    epochs, reps, exposure = d["epochs"], d["repetitions"], d["exposure"]
    cap = float(d["log2_space_size"]) if "log2_space_size" in d else float("nan")
    method = str(d["method"]) if "method" in d else "?"
    counts = np.unique(reps)
    s = _Section("Canary exposure (Secret Sharer)")
    s.lines.append(
        f"{len(reps)} canaries, method {method}, randomness space {_fmt(cap, 1)} bits; "
        f"evaluated at epochs {', '.join(str(int(e)) for e in epochs)}"
    )
    if exposure.size:
        last = exposure[-1]
        per = ", ".join(f"x{int(c)}: {_fmt(np.nanmean(last[reps == c]), 1)}" for c in counts)
        s.lines.append(f"mean exposure (bits) by insertion count at the last evaluation: {per}")
        s.lines.append(f"largest exposure: {_fmt(np.nanmax(last), 1)} bits")
        fig, ax = plt.subplots(figsize=(6, 4))
        cmap = plt.get_cmap("viridis")
        for i, (e, row) in enumerate(zip(epochs, exposure)):
            means = [np.nanmean(row[reps == c]) for c in counts]
            ax.plot(
                counts, means, marker="o", color=cmap(i / max(1, len(epochs) - 1)), label=f"epoch {int(e)}"
            )
        if math.isfinite(cap):
            ax.axhline(cap, color="grey", ls="--", lw=1, label=f"max log2|R| = {cap:.1f}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts, [str(int(c)) for c in counts])
        ax.set_xlabel("times the canary was inserted")
        ax.set_ylabel("mean exposure (bits)")
        ax.set_title("Exposure vs repetition count")
        ax.legend(fontsize=8)
        s.figures.append(
            (_save(fig, out_dir, "exposure_vs_repetitions.png"), "Exposure vs repetition count per epoch")
        )
    return s


def _membership_section(root: Path, out_dir: Path) -> _Section | None:
    mdir = root / "membership"
    if not (mdir / "losses.npz").exists():
        return None
    import matplotlib.pyplot as plt

    from memcallbacks.metrics.membership import membership_inference, roc_curve

    d = _io.load_npz(mdir / "losses.npz")
    members, nonmembers = d["member_losses"], d["nonmember_losses"]
    s = _Section("Membership inference (loss threshold)")
    if members.size == 0:
        s.lines.append("no evaluation recorded yet")
        return s
    m, n = members[-1], nonmembers[-1]
    m, n = m[np.isfinite(m)], n[np.isfinite(n)]
    rep = membership_inference(m, n, fprs=(0.001, 0.01))
    s.lines.append(
        f"last evaluation (epoch {int(d['epochs'][-1])}): AUC {_fmt(rep.auc)}, advantage {_fmt(rep.advantage)}, "
        f"TPR@0.1%FPR {_fmt(rep.tpr_at_fpr[0.001])}, TPR@1%FPR {_fmt(rep.tpr_at_fpr[0.01])} "
        f"({rep.n_members} members, {rep.n_nonmembers} non-members: FPR 0.1% allows "
        f"{int(rep.n_nonmembers * 0.001)} false positive(s), so TPR there is "
        f"{'coarse' if rep.n_nonmembers < 10_000 else 'resolved'})"
    )
    fpr, tpr, _ = roc_curve(m, n)
    fig, ax = plt.subplots(figsize=(5, 5))
    floor = 1.0 / max(len(n), 1) / 2
    ax.plot(np.maximum(fpr, floor), np.maximum(tpr, floor), label=f"attack (AUC {rep.auc:.3f})")
    grid = np.logspace(math.log10(floor), 0, 50)
    ax.plot(grid, grid, color="grey", ls="--", lw=1, label="chance")
    for x in (0.001, 0.01):
        ax.plot([x], [max(rep.tpr_at_fpr[x], floor)], "o", label=f"TPR@{x:.1%} FPR = {rep.tpr_at_fpr[x]:.3f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title("Membership-inference ROC (log-log)")
    ax.legend(fontsize=8, loc="lower right")
    s.figures.append(
        (_save(fig, out_dir, "mia_roc.png"), "ROC of the loss-threshold attack, last evaluation")
    )

    epochs = d["epochs"]
    gaps, aucs = [], []
    for mm, nn_ in zip(members, nonmembers):
        mm, nn_ = mm[np.isfinite(mm)], nn_[np.isfinite(nn_)]
        gaps.append(float(nn_.mean() - mm.mean()) if mm.size and nn_.size else float("nan"))
        aucs.append(membership_inference(mm, nn_, fprs=(0.01,)).auc if mm.size and nn_.size else float("nan"))
    fig, ax1 = plt.subplots(figsize=(6, 4))
    ax1.plot(epochs, gaps, marker="o", color="tab:blue", label="loss gap")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("held-out minus member loss", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(epochs, aucs, marker="s", color="tab:red", label="AUC")
    ax2.axhline(0.5, color="tab:red", ls=":", lw=1)
    ax2.set_ylabel("attack AUC", color="tab:red")
    ax1.set_title("Loss gap and membership AUC over training")
    s.figures.append((_save(fig, out_dir, "gap_auc.png"), "Train/held-out loss gap and attack AUC per epoch"))
    return s


def _trajectory_section(root: Path, out_dir: Path) -> _Section | None:
    tdir = root / "trajectory"
    if not (tdir / "statistics.npz").exists():
        return None
    import matplotlib.pyplot as plt

    d = _io.load_npz(tdir / "statistics.npz")
    seen = d["count"] > 0
    s = _Section("Per-sample loss trajectories (data map)")
    s.lines.append(
        f"{int(seen.sum())} of {len(seen)} samples recorded over {len(d['epochs'])} epochs; "
        f"mean loss {_fmt(np.nanmean(d['mean'][seen]))}"
    )
    fig, ax = plt.subplots(figsize=(6, 5))
    x, y = d["variability"][seen], d["mean"][seen]
    colour = d["forgetting"][seen] if "forgetting" in d else None
    if colour is not None:
        sc = ax.scatter(x, y, s=4, c=colour, cmap="viridis", alpha=0.5, lw=0)
        fig.colorbar(sc, ax=ax, label="forgetting events")
    else:
        ax.scatter(x, y, s=4, color="tab:blue", alpha=0.5, lw=0)
    score = d["score"] if "score" in d else d["mean"]
    ids = d["sample_ids"] if "sample_ids" in d else np.arange(len(seen))
    k = max(1, min(50, int(seen.sum()) // 100))
    order = np.argsort(-np.where(seen & np.isfinite(score), score, -np.inf))[:k]
    ax.scatter(
        d["variability"][order],
        d["mean"][order],
        s=22,
        facecolors="none",
        edgecolors="red",
        label=f"top {k} by memorisation score",
    )
    canary_file = root / "canary" / "exposure.npz"
    if canary_file.exists():
        c = _io.load_npz(canary_file)
        if "injected_index" in c:
            pos = np.nonzero(np.isin(ids, c["injected_index"]))[0]
            pos = pos[seen[pos]]
            if pos.size:
                ax.scatter(
                    d["variability"][pos],
                    d["mean"][pos],
                    marker="*",
                    s=60,
                    color="orange",
                    edgecolors="black",
                    lw=0.5,
                    label="canaries",
                )
    ax.set_xlabel("variability (std of p(gold) = exp(-loss) over epochs)")
    ax.set_ylabel("mean loss over epochs")
    ax.set_title("Data map")
    ax.legend(fontsize=8)
    s.figures.append(
        (_save(fig, out_dir, "data_map.png"), "Data map: mean loss vs variability per training sample")
    )
    if "forgetting" in d:
        s.lines.append(f"mean forgetting events per sample: {_fmt(np.nanmean(d['forgetting'][seen]))}")
    return s


def _privacy_section(root: Path, out_dir: Path) -> _Section | None:
    dp_file, audit_file = root / "dp" / "dp.json", root / "audit" / "audit.json"
    if not dp_file.exists() and not audit_file.exists():
        return None
    import matplotlib.pyplot as plt

    s = _Section("Privacy: DP-SGD epsilon and the one-run audit")
    fig, ax = plt.subplots(figsize=(6, 4))
    if dp_file.exists():
        dp = _io.load_json(dp_file)
        hist = dp.get("history", [])
        if hist:
            ax.plot(
                [h["epoch"] for h in hist],
                [h["epsilon"] if h["epsilon"] is not None else np.nan for h in hist],
                marker="o",
                label=f"DP-SGD epsilon ({dp.get('accountant')}, delta={dp.get('delta')})",
            )
            s.lines.append(
                f"DP-SGD epsilon after epoch {hist[-1]['epoch']}: {_fmt(hist[-1]['epsilon'])} "
                f"at delta {dp.get('delta')} ({dp.get('accountant')} accountant)"
            )
    if audit_file.exists():
        au = _io.load_json(audit_file)
        hist = au.get("history", [])
        if hist:
            ax.plot(
                [h["epoch"] for h in hist],
                [h["epsilon_lb"] for h in hist],
                marker="s",
                label=f"audit lower bound ({au.get('num_canaries')} canaries, beta={au.get('beta')})",
            )
            last = hist[-1]
            s.lines.append(
                f"one-run audit after epoch {last['epoch']}: epsilon >= {_fmt(last['epsilon_lb'])} with confidence "
                f"{1 - float(au.get('beta', 0.05)):.0%} ({last.get('correct')} of {last.get('guesses')} guesses right)"
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel("epsilon")
    ax.set_title("Privacy loss over training")
    ax.legend(fontsize=8)
    s.figures.append(
        (
            _save(fig, out_dir, "epsilon.png"),
            "Epsilon over epochs: accountant (upper) and audit (lower bound)",
        )
    )
    return s


# -- rendering ------------------------------------------------------------------------------
def _markdown(root: Path, sections: list[_Section]) -> str:
    out = ["# memcallbacks report", "", f"Run directory: `{root}`", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        out += [f"- {line}" for line in s.lines]
        out.append("")
        out += [f"![{cap}]({name})" for name, cap in s.figures]
        out.append("")
    out.append("Per-sample values stay in the run directory; nothing here was sent to a tracker.")
    return "\n".join(out) + "\n"


def _html(root: Path, out_dir: Path, sections: list[_Section]) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>memcallbacks report</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}"
        "figure{display:inline-block;margin:0.5em}img{max-width:460px}figcaption{font-size:0.85em;color:#555}"
        "h2{border-bottom:1px solid #ddd}</style></head><body>",
        "<h1>memcallbacks report</h1>",
        f"<p>Run directory: <code>{html.escape(str(root))}</code></p>",
    ]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2><ul>")
        for line in s.lines:
            parts.append(f"<li>{html.escape(line).replace('**', '')}</li>")
        parts.append("</ul>")
        for name, cap in s.figures:
            data = base64.b64encode((out_dir / name).read_bytes()).decode()
            parts.append(
                f"<figure id='{html.escape(name)}'><img alt='{html.escape(name)}' "
                f"src='data:image/png;base64,{data}'><figcaption>{html.escape(cap)} "
                f"(<code>{html.escape(name)}</code>)</figcaption></figure>"
            )
    parts.append(
        "<p><small>Generated from the run directory alone; per-sample values never leave it.</small></p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)
