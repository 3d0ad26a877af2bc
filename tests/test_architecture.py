"""The shape of the code: module sizes, no import cycles, no reaching into private names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
TOOL = ROOT.parent / "shared" / "tools" / "import_cycles.py"
MAX_LINES = 600


def test_no_module_is_over_600_lines():
    big = []
    for path in sorted((ROOT / "skate").rglob("*.py")):
        n = sum(1 for _ in path.open(encoding="utf-8"))
        if n > MAX_LINES:
            big.append(f"{path.relative_to(ROOT)}: {n} lines")
    assert not big, "modules over 600 lines (split them by concern):\n" + "\n".join(big)


@pytest.mark.skipif(not TOOL.exists(), reason="../shared/tools/import_cycles.py is not beside this checkout")
def test_no_import_cycle_and_no_private_imports():
    out = subprocess.run([sys.executable, str(TOOL), str(ROOT / "skate")], capture_output=True, text=True, timeout=60)
    problems = [ln for ln in out.stdout.splitlines() if ln.startswith(("cycle:", "private:"))]
    assert not problems, "\n".join(problems)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 cycles, 0 imports of private names" in out.stdout
