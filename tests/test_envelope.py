"""The scalability envelope benchmark, with tiny dimensions (the full run is ``python -m benchmarks --envelope``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.timeout(300)
def test_envelope_runs_every_dimension_with_tiny_sizes(tmp_path):
    out = tmp_path / "envelope.json"
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--envelope", "--scale", "0.001", "--returns", "1500",
         "--large", "0.02", "--num-cpus", "2", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=280, env=dict(os.environ),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {row["dimension"]: row for row in json.loads(out.read_text())}
    assert set(rows) == {"args", "returns", "get", "queued", "large", "actors", "inflight"}
    for name, row in rows.items():
        res = row["skate"]
        assert "error" not in res and res["seconds"] > 0 and res["peak_gib"] > 0, (name, res)
        assert res["cpu_s"] >= 0, (name, res)  # CPU time of the timed part (tiny: may round to 0)
    assert rows["queued"]["n"] == 1000 and rows["returns"]["n"] == 1500  # --scale, and a per-dimension N
    large = rows["large"]["skate"]
    assert large["gbps"] > 0 and large["warm_gbps"] > 0 and large["memcpy_gbps"] > 0
    assert "tasks queued at once" in r.stdout


def test_envelope_rejects_an_unknown_dimension():
    r = subprocess.run([sys.executable, "-m", "benchmarks", "--envelope", "-k", "nope"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown dimension 'nope'" in r.stderr
