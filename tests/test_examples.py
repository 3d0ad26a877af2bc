"""The shared example programs and the bundled pi example, each in a process of its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[2] / "shared" / "examples"

CASES = [
    ("01_tasks_objects.py", "01_tasks_objects: ok"),
    ("02_actors.py", "02_actors: ok"),
    ("03_dag_mapreduce.py", "03_dag_mapreduce: ok"),
    ("04_compiled_graphs.py", "04_compiled_graphs: ok"),
]


def _run(args: list[str], cwd: Path | None, timeout: float = 240) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            [sys.executable, *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise AssertionError(f"{args} ran past {timeout}s\n--- stdout\n{out[-4000:]}\n--- stderr\n{err[-4000:]}") from None


@pytest.mark.timeout(300)
@pytest.mark.parametrize("script,ok_line", CASES, ids=[c[0] for c in CASES])
def test_shared_example(script, ok_line):
    path = EXAMPLES / script
    if not path.exists():
        pytest.skip(f"{path} is missing")
    proc = _run([str(path)], cwd=EXAMPLES)
    detail = f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, f"{script} exited with {proc.returncode}\n{detail}"
    assert ok_line in proc.stdout.splitlines(), f"{script} did not print {ok_line!r}\n{detail}"


@pytest.mark.timeout(300)
def test_pi_example():
    proc = _run(["-m", "skate.examples.pi", "--samples", "200000"], cwd=Path(__file__).parents[1])
    detail = f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, detail
    assert "pi ~" in proc.stdout, detail
    final = [ln for ln in proc.stdout.splitlines() if ln.startswith("pi ~")]
    assert final, detail
    estimate = float(final[-1].split()[2])
    assert 3.0 < estimate < 3.3, final[-1]
