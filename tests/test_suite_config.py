"""The suite's own configuration: a run ends with the list of skipped tests and why (pytest -rs in pyproject)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_run_lists_its_skipped_tests_and_why(tmp_path):
    (tmp_path / "test_one.py").write_text(
        "import pytest\n\n\ndef test_runs():\n    pass\n\n\n"
        "@pytest.mark.skip(reason='a reason worth reading')\ndef test_skipped():\n    pass\n"
    )
    argv = [str(tmp_path / "test_one.py"), "-c", str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path),
            "-p", "no:cacheprovider"]
    p = subprocess.run([sys.executable, "-m", "pytest", *argv], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    summary = p.stdout[p.stdout.index("short test summary info"):]
    assert "SKIPPED [1]" in summary and "a reason worth reading" in summary
