"""`nhr run` on bad input: one clear line, a non-zero exit, nothing written lost."""

from pathlib import Path

from nhr.cli import RUN_LOCK
from nhr.lock import RunLock
from tests.conftest import nhr_cli


def _last_line(proc) -> str:
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def test_unknown_key_and_out_of_range_value(tmp_path):
    proc = nhr_cli("run", "configs/tiny.yaml", "-p", "N_PROMPTZ", "3", "--run-dir", str(tmp_path))
    assert proc.returncode == 2
    assert _last_line(proc).startswith("nhr: unknown parameter 'N_PROMPTZ' — use one of:")
    proc = nhr_cli("run", "configs/tiny.yaml", "-p", "THRESHOLD", "7", "--run-dir", str(tmp_path))
    assert proc.returncode == 2 and "THRESHOLD=7 is out of range" in _last_line(proc)
    assert not (tmp_path / "config.yaml").exists()


def test_missing_config_and_missing_notebook(tmp_path):
    proc = nhr_cli("run", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2 and "does not exist" in _last_line(proc)
    cfg = tmp_path / "configs" / "x.yaml"
    cfg.parent.mkdir()
    cfg.write_text("name: x\nnotebooks: [notebooks/99_missing.ipynb]\n")
    proc = nhr_cli("run", str(cfg))
    assert proc.returncode == 2 and "99_missing.ipynb" in _last_line(proc)


def test_a_run_folder_with_another_config_is_refused(tmp_path):
    (tmp_path / "config.yaml").write_text("N_PROMPTS: 99\n")
    (tmp_path / "keep.txt").write_text("precious")
    proc = nhr_cli("run", "configs/tiny.yaml", "--run-dir", str(tmp_path))
    assert proc.returncode == 2
    assert "was made with another config (N_PROMPTS: 99 → 6)" in _last_line(proc)
    assert (tmp_path / "keep.txt").read_text() == "precious"
    assert (tmp_path / "config.yaml").read_text() == "N_PROMPTS: 99\n"


def test_a_live_run_is_named_and_a_dead_one_is_not_live(tmp_path):
    with RunLock(Path(tmp_path) / RUN_LOCK, "test holder"):
        proc = nhr_cli("run", "configs/tiny.yaml", "--run-dir", str(tmp_path))
    assert proc.returncode == 2
    import os

    assert f"is being written by process {os.getpid()}" in _last_line(proc)
    # the lock file left behind by a dead holder does not block anything
    assert (Path(tmp_path) / RUN_LOCK).exists()
    lock = RunLock(Path(tmp_path) / RUN_LOCK, "after").acquire()
    lock.release()


def test_audit_needs_a_run(tmp_path):
    proc = nhr_cli("audit", str(tmp_path))
    assert proc.returncode == 2 and "has no config.yaml" in _last_line(proc)
