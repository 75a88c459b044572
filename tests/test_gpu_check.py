"""scripts/gpu_check.py's CPU dry run: the lever section runs on tiny dims and prints one
JSON object (sets past the time budget, or lacking fp8/FA3 here, say why)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_run_prints_the_levers(tmp_path):
    out = tmp_path / "figures.json"
    cmd = [sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--tiny", "--no-tests"]
    cmd += ["--no-train", "--lever-steps", "2", "--lever-batch", "2", "--budget", "0"]
    proc = subprocess.run([*cmd, "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sets = json.loads(out.read_text())["levers"]["sets"]
    assert list(sets)[:2] == ["eager", "regional"] and "+magcache" in sets
    assert sets["eager"]["drift_from_eager"] == 0.0 and sets["eager"]["seconds_per_edit"] > 0
    assert all("seconds_per_edit" in v or v["skipped"] for v in sets.values())
