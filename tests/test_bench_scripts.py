"""The benchmark scripts that only run on machines we do not have in CI (a GPU) stay runnable: their --dry-run
builds tiny versions of the same architectures and runs every phase on the CPU."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent / "bench"


def test_gpu_real_arch_dry_run_runs(tmp_path):
    out = tmp_path / "rows.jsonl"
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_real_arch.py"), "--dry-run", "--archs", "sdxl",
                           "--phases", "exact,sail", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["load", "exact", "sail"]
    assert all(r["dry_run"] and r["seconds"] >= 0 and r["peak_bytes"] > 0 for r in rows)
