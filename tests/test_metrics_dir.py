"""The metrics folder is chosen before prometheus_client loads, or the process says so."""

from __future__ import annotations

import os
import subprocess
import sys

from tracker.testing import ROOT, clean_env


def run(code: str) -> subprocess.CompletedProcess:
    env = {**clean_env(), "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT))}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True
    )


def test_chosen_first_the_metrics_go_to_the_shared_folder(tmp_path):
    done = run(
        "import pathlib, sys\n"
        "from tracker import metrics_dir\n"
        f"metrics_dir.use(pathlib.Path({str(tmp_path)!r}))\n"
        "assert 'prometheus_client' not in sys.modules\n"
        "from tracker import metrics\n"
        "metrics.CLICKS.inc()\n"
    )
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.glob("*.db"))  # samples in files, for every process to add up


def test_too_late_is_an_error_not_a_silent_gap(tmp_path):
    done = run(
        "import pathlib\n"
        "import tracker.metrics\n"
        "from tracker import metrics_dir\n"
        f"metrics_dir.use(pathlib.Path({str(tmp_path)!r}))\n"
    )
    assert done.returncode != 0 and "TooLate" in done.stderr


def test_the_cli_imports_no_prometheus_before_it_chooses():
    done = run("import sys, tracker.cli\nassert 'prometheus_client' not in sys.modules\n")
    assert done.returncode == 0, done.stderr
