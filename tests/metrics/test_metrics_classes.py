"""torchmetrics classes over the membership core: equal to the functions, in one process and in 2-process gloo."""

from __future__ import annotations

import copy
import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from memcallbacks.metrics import LossGap, LossThresholdMIA, MembershipReport, loss_gap, membership_inference

pytestmark = pytest.mark.filterwarnings("ignore:membership_inference. only:UserWarning")


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    members = rng.gamma(1.5, 0.6, size=203).astype(np.float32)
    nonmembers = rng.gamma(2.0, 0.8, size=157).astype(np.float32)
    members[:20] = nonmembers[:20]  # ties across the groups
    return members, nonmembers


def test_report_equals_the_functional_over_uneven_batches() -> None:
    members, nonmembers = _data()
    metric = LossThresholdMIA(fprs=(0.01, 0.1))
    gap = LossGap()
    cuts_m, cuts_n = [0, 50, 50, 120, 203], [0, 0, 60, 157, 157]  # some batches hold one side only
    for i in range(4):
        m = torch.from_numpy(members[cuts_m[i] : cuts_m[i + 1]])
        n = torch.from_numpy(nonmembers[cuts_n[i] : cuts_n[i + 1]])
        metric.update(m, n)
        gap.update(m, n)
    report = metric.compute()
    expected = membership_inference(members, nonmembers, fprs=(0.01, 0.1))
    assert isinstance(report, MembershipReport)
    assert report == expected  # every field, exactly
    assert float(gap.compute()) == pytest.approx(loss_gap(members, nonmembers), rel=1e-12)


def test_reset_copy_and_pickle_keep_the_contract() -> None:
    members, nonmembers = _data(1)
    metric = LossThresholdMIA(fprs=(0.1,))
    metric.update(torch.from_numpy(members), torch.from_numpy(nonmembers))
    expected = membership_inference(members, nonmembers, fprs=(0.1,))
    assert metric.compute() == expected
    assert copy.deepcopy(metric).compute() == expected
    restored = pickle.loads(pickle.dumps(metric))
    assert restored.compute() == expected
    metric.reset()
    m, n = torch.tensor([0.1, 0.2]), torch.tensor([0.3])
    metric.update(m, n)
    assert metric.compute() == membership_inference(m, n, fprs=(0.1,))


def test_bad_input_names_the_argument() -> None:
    metric = LossThresholdMIA()
    with pytest.raises(ValueError, match="`member_losses` must be a 1-D tensor of per-sample losses"):
        metric.update(torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(TypeError, match="`nonmember_losses` must hold real per-sample losses"):
        metric.update(torch.zeros(2), torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"`fprs` must hold false-positive rates in \(0, 1\)"):
        LossThresholdMIA(fprs=(1.5,))
    metric.update(torch.tensor([float("nan")]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="`member_losses` must be finite"):
        metric.compute()


def test_importing_metrics_does_not_import_torchmetrics() -> None:
    code = "import sys, memcallbacks.metrics\nprint('torchmetrics' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp

    from memcallbacks.metrics import LossGap, LossThresholdMIA


    def run(rank, world, init, out, members, nonmembers):
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
        metric, gap = LossThresholdMIA(fprs=(0.01, 0.1)), LossGap()
        # rank 0 sees members 0..149 and no non-member; rank 1 the rest (uneven sizes)
        m = members[:150] if rank == 0 else members[150:]
        n = nonmembers[:0] if rank == 0 else nonmembers
        for part_m, part_n in zip(np.array_split(m, 3), np.array_split(n, 3)):
            metric.update(torch.from_numpy(part_m), torch.from_numpy(part_n))
            gap.update(torch.from_numpy(part_m), torch.from_numpy(part_n))
        r = metric.compute()
        row = {"auc": r.auc, "advantage": r.advantage, "tpr": {str(k): v for k, v in r.tpr_at_fpr.items()},
               "threshold": r.threshold, "n_members": r.n_members, "n_nonmembers": r.n_nonmembers,
               "gap": float(gap.compute())}
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump(row, f)
        dist.destroy_process_group()


    if __name__ == "__main__":
        out = sys.argv[1]
        data = np.load(f"{out}/data.npz")
        init = f"file://{out}/rendezvous"
        mp.spawn(run, args=(2, init, out, data["members"], data["nonmembers"]), nprocs=2, join=True)
    """
)


@pytest.mark.ddp
@pytest.mark.slow
def test_two_process_gloo_sync_equals_the_functional_on_all_samples(tmp_path: Path) -> None:
    members, nonmembers = _data(2)
    np.savez(tmp_path / "data.npz", members=members, nonmembers=nonmembers)
    script = tmp_path / "ddp_metric.py"
    script.write_text(_SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    expected = membership_inference(members, nonmembers, fprs=(0.01, 0.1))
    rows = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert rows[0] == rows[1]  # every rank gets the same result
    row = rows[0]
    assert row["n_members"] == members.size
    assert row["n_nonmembers"] == nonmembers.size
    assert row["auc"] == expected.auc
    assert row["advantage"] == expected.advantage
    assert row["threshold"] == expected.threshold
    assert row["tpr"] == {str(k): v for k, v in expected.tpr_at_fpr.items()}
    assert row["gap"] == pytest.approx(loss_gap(members, nonmembers), rel=1e-12)
