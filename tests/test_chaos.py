"""The short version of the whole-system fault suite (`make chaos` runs the long one)."""

from __future__ import annotations

import pytest

from tests.chaos import run_scenarios


@pytest.mark.parametrize("scenario", ["sigkill", "restart", "corrupt", "disk"])
def test_chaos_short(scenario, tmp_path):
    results = run_scenarios(tmp_path, short=True, only=lambda name: name == scenario)
    assert len(results) == 1
    result = results[0]
    assert result.lost == 0 and result.records > 0, result
    assert result.faults >= 1
