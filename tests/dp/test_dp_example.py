"""The DP-vs-non-DP example, shortened: DP-SGD lowers the exposure of the most repeated canaries."""

from __future__ import annotations

from pathlib import Path

import dp_vs_nondp
import numpy as np
import pytest


@pytest.mark.slow
def test_dp_lowers_exposure_of_repeated_canaries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = dp_vs_nondp.main(
        [
            "--epochs",
            "2",
            "--sentences",
            "2000",
            "--references",
            "1000",
            "--audit-canaries",
            "100",
            "--out",
            str(tmp_path),
        ]
    )
    printed = capsys.readouterr().out
    assert "sanity check: audit epsilon lower bound" in printed
    assert "DP-SGD" in printed
    assert out["counts"] == [1, 2, 4, 8, 16, 32]
    nondp, dp = out["nondp"], out["dp"]
    # without DP the 16- and 32-times canaries are memorised; with DP their means drop clearly
    assert (nondp[16] + nondp[32]) / 2 > 8.0
    assert (dp[16] + dp[32]) / 2 < (nondp[16] + nondp[32]) / 2 - 4.0
    assert dp[32] < nondp[32]
    # the audit's lower bound never exceeds the accountant's epsilon, which is finite and positive
    assert 0 < out["epsilon"] < 20
    assert out["audit_within_bound"]
    assert np.isfinite(out["exposure"]["dp"]).all()
