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


def test_nothing_outside_the_tests_points_outside_the_repository():
    import re

    # a folder beside or above the checkout (only the tests may look for ../shared, where CI puts the test sets)
    outside = re.compile(r"\.\./shared|/work/|\.parent\s*/\s*[\"']shared[\"']|\.\.[/\\]\.\.[/\\]")
    files = [*REPO.glob("src/ddlm/**/*.py"), *REPO.glob("benchmarks/*.py"), *REPO.glob("*.md"),
             *REPO.glob("models/*/README.md"), REPO / "Makefile"]
    found = [f"{f.relative_to(REPO)}:{n}: {line.strip()}" for f in files if f.is_file()
             for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1) if outside.search(line)]
    assert len(files) > 20 and not found, "\n".join(found)
