"""The sequence-memorisation section of language models.

Greedy extraction rate of members and non-members (Carlini et al. 2023), the AUCs of the loss,
Min-K% Prob and zlib scores, and the (n, p)-discoverable extraction rate against the number of tries
(Hayes et al. 2024)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from memcallbacks.report.common import (
    Section,
    fmt,
    integer_epochs,
    name_tag,
    save_figure,
    titled,
)
from memcallbacks.rundir import (
    SEQUENCE,
    RunDirectory,
    SequenceFiles,
    as_number,
)

__all__ = ["SEQUENCE_TITLE", "sequence_section"]

SEQUENCE_TITLE = "Sequence memorisation (language models)"


def sequence_section(
    run: RunDirectory, out_dir: Path, subdir: str = SEQUENCE, title: str | None = None
) -> Section | None:
    """Greedy and (n, p)-discoverable extraction, LM membership AUCs, and their figures.

    Args:
        run: the run directory.
        out_dir: where ``sequence_epochs[_<name>].png`` and ``extraction_vs_tries[_<name>].png`` go.
        subdir: the monitor's folder (``sequence`` or ``sequence_<name>``).
        title: the section's title (default: the standard title, with the folder when named).

    Returns:
        The section, or ``None`` when the folder holds no ``sequences.npz``.
    """
    seq = run.sequence(subdir)
    if seq is None:
        return None
    s = Section(title or titled(SEQUENCE_TITLE, subdir))
    if not seq.history:
        s.lines.append("no evaluation recorded yet")
        return s
    last = seq.history[-1]
    s.lines.append(
        f"last evaluation (epoch {int(as_number(last.get('epoch')))}): exact extraction of the "
        f"{seq.summary.get('suffix_len')}-token suffix from a {seq.summary.get('prefix_len')}-token prefix "
        f"(Carlini et al. 2023): members {fmt(last.get('mem/extract/exact_rate'))}, non-members "
        f"{fmt(last.get('mem/extract/exact_rate_nonmember'))}; token match {fmt(last.get('mem/extract/token_match'))}"
    )
    tries = _n_tries(seq.summary, last)
    p = seq.summary.get("p_threshold")
    s.lines += _verdict(
        "greedy extraction", last, "mem/extract/exact_rate", "mem/extract/exact_rate_nonmember"
    )
    if tries:
        s.lines += _sampled_lines(last, tries, p)
    aucs = [
        f"{score} {fmt(last.get(f'mem/mia_lm/auc/{score}'))}"
        for score in ("loss", "min_k", "zlib", "min_k_pp")
        if f"mem/mia_lm/auc/{score}" in last
    ]
    if aucs:
        s.lines.append(
            "membership-inference AUC by score (loss: Yeom et al. 2018; min_k: Shi et al. 2024; "
            "min_k_pp: Zhang et al. 2025; zlib: "
            f"Carlini et al. 2021): {', '.join(aucs)}"
        )
    tag = name_tag(subdir)
    name = _sequence_over_epochs(seq, out_dir, tag)
    if name is not None:
        s.figures.append(
            (name, "Greedy extraction rate (members, non-members) and LM membership AUCs per epoch")
        )
    if tries:
        s.figures.append(
            (
                _extraction_vs_tries(seq, out_dir, tag, tries, p),
                f"(n, p)-discoverable extraction rate against the number of tries n, p = {fmt(p, 2)}, members "
                "(solid) beside held-out probes (dashed), greedy rate marked (Hayes et al. 2024)",
            )
        )
    return s


def _sampled_lines(last: dict[str, Any], tries: list[int], p: Any) -> list[str]:
    """The (n, p)-discoverable rates of members beside the held-out probes', and the verdict at the largest n."""
    rates = ", ".join(
        f"n={n}: members {fmt(last.get(f'mem/extract/prob_rate/n{n}'))} vs held out "
        f"{fmt(last.get(f'mem/extract/prob_rate_nonmember/n{n}'))}"
        for n in tries
    )
    n = tries[-1]
    return [
        f"(n, p)-discoverable extraction (Hayes et al. 2024), p = {fmt(p, 2)}: fraction of probes "
        f"that a user sampling n times gets back at least once with probability >= p: {rates}; "
        f"mean single-sample probability: members {fmt(last.get('mem/extract/prob_mean'), 4)} vs held out "
        f"{fmt(last.get('mem/extract/prob_mean_nonmember'), 4)}",
        *_verdict(
            f"(n={n}, p) extraction",
            last,
            f"mem/extract/prob_rate/n{n}",
            f"mem/extract/prob_rate_nonmember/n{n}",
        ),
    ]


def _verdict(what: str, row: dict[str, Any], member_key: str, heldout_key: str) -> list[str]:
    """A plain line when the members' rate is not above the held-out rate of the same kind (else none)."""
    member, heldout = as_number(row.get(member_key)), as_number(row.get(heldout_key))
    if not (math.isfinite(member) and math.isfinite(heldout)) or member > heldout:
        return []
    return [
        f"**{what}: members ({fmt(member)}) are not above the held-out baseline ({fmt(heldout)})**: the model "
        "completes the text it was trained on no more often than text it never saw, so this rate shows no "
        "memorisation"
    ]


def _n_tries(summary: dict[str, Any], row: dict[str, Any]) -> list[int]:
    """The ``n`` of the ``mem/extract/prob_rate/n<n>`` keys: the summary's ``n_tries``, else the keys logged."""
    tries = summary.get("n_tries")
    if isinstance(tries, list) and tries:
        return sorted(int(n) for n in tries)
    out = []
    for key in row:
        rest = key[len("mem/extract/prob_rate/n") :] if key.startswith("mem/extract/prob_rate/n") else ""
        if rest.isdigit():
            out.append(int(rest))
    return sorted(out)


def _sequence_over_epochs(seq: SequenceFiles, out_dir: Path, tag: str) -> str | None:
    import matplotlib.pyplot as plt

    epochs = seq.metric("epoch")
    rates = {
        "members (trained on)": seq.metric("mem/extract/exact_rate"),
        "non-members (never trained on)": seq.metric("mem/extract/exact_rate_nonmember"),
    }
    aucs = {
        "loss (Yeom et al. 2018)": seq.metric("mem/mia_lm/auc/loss"),
        "Min-K% Prob (Shi et al. 2024)": seq.metric("mem/mia_lm/auc/min_k"),
        "Min-K%++ (Zhang et al. 2025)": seq.metric("mem/mia_lm/auc/min_k_pp"),
        "zlib ratio (Carlini et al. 2021)": seq.metric("mem/mia_lm/auc/zlib"),
    }
    if not any(np.isfinite(v).any() for v in (*rates.values(), *aucs.values())):
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for (label, values), marker in zip(rates.items(), ("o", "s")):
        if np.isfinite(values).any():
            ax1.plot(epochs, values, marker=marker, label=label)
    ax1.set_ylabel("fraction of probes extracted exactly (greedy)")
    _rate_limits(ax1, *rates.values())
    ax1.set_title(f"Greedy extraction rate ({seq.summary.get('suffix_len')}-token suffix)")
    integer_epochs(ax1)
    ax1.legend(fontsize=8, loc="best")
    for (label, values), marker in zip(aucs.items(), ("o", "s", "D", "^")):
        if np.isfinite(values).any():
            ax2.plot(epochs, values, marker=marker, label=label)
    ax2.axhline(0.5, color="grey", ls=":", lw=1, label="chance: AUC 0.5")
    ax2.set_ylabel("membership-inference AUC")
    ax2.set_title("LM membership scores")
    integer_epochs(ax2)
    ax2.legend(fontsize=8, loc="best")
    fig.suptitle("Sequence memorisation over training" + (f" ({tag[1:]})" if tag else ""))
    fig.tight_layout()
    return save_figure(fig, out_dir, f"sequence_epochs{tag}.png")


def _rate_limits(ax: Any, *values: np.ndarray) -> None:
    """A rate axis from just below 0 (points at 0 stay whole) to above the largest rate."""
    finite = [v[np.isfinite(v)] for v in values]
    top = max([float(np.max(v)) for v in finite if v.size] + [0.01])
    ax.set_ylim(-0.04 * top, 1.08 * top)


def _extraction_vs_tries(seq: SequenceFiles, out_dir: Path, tag: str, tries: list[int], p: Any) -> str:
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(6, 4))
    cmap = plt.get_cmap("viridis")
    rows = seq.history
    for i, row in enumerate(rows):
        color = cmap(i / max(1, len(rows) - 1))
        epoch = int(as_number(row.get("epoch")))
        ax.plot(
            tries,
            [as_number(row.get(f"mem/extract/prob_rate/n{n}")) for n in tries],
            marker="o",
            color=color,
            label=f"epoch {epoch}",
        )
        heldout = [as_number(row.get(f"mem/extract/prob_rate_nonmember/n{n}")) for n in tries]
        if any(math.isfinite(v) for v in heldout):
            ax.plot(tries, heldout, marker="x", ls="--", color=color, alpha=0.8)
        greedy = as_number(row.get("mem/extract/exact_rate"))
        if math.isfinite(greedy):
            ax.plot(
                [tries[0]],
                [greedy],
                marker="*",
                ms=13,
                color=color,
                mec="black",
                mew=0.6,
                ls="none",
                zorder=3,
            )
    handles, _ = ax.get_legend_handles_labels()
    handles += [
        Line2D([], [], marker="x", color="grey", ls="--", label="held out (never trained on): the baseline"),
        Line2D([], [], marker="*", ms=11, color="grey", mec="black", mew=0.6, ls="none",
               label="greedy exact rate (one greedy decode)"),
        Line2D([], [], ls="none", label=f"p_threshold = {fmt(p, 2)}: extracted with probability >= p"),
    ]  # fmt: skip
    ax.set_xscale("log")
    ax.set_xticks(tries, [str(n) for n in tries])
    ax.minorticks_off()
    _rate_limits(
        ax,
        *[seq.metric(f"mem/extract/prob_rate{who}/n{n}") for n in tries for who in ("", "_nonmember")],
        seq.metric("mem/extract/exact_rate"),
    )
    ax.set_xlabel("n: samples drawn from the prefix (log scale)")
    ax.set_ylabel("fraction of probes extracted (solid: members)")
    ax.set_title("(n, p)-discoverable extraction vs tries" + (f" ({tag[1:]})" if tag else ""))
    ax.legend(handles=handles, fontsize=7, loc="best")
    return save_figure(fig, out_dir, f"extraction_vs_tries{tag}.png")
