"""Repository files that are not Python: packaging globs and the benchmark data script."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_package_data_globs_match_files():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"].get("package-data", {})
    for package, globs in data.items():
        for pattern in globs:
            assert list((ROOT / package).glob(pattern)), f"package-data {package}: '{pattern}' matches nothing"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_pack_for_gpu_defaults_data_next_to_the_checkout(tmp_path):
    """No machine-specific absolute default: DATA is ../shared/data beside the checkout, and the
    error says so when it is missing."""
    checkout = tmp_path / "checkout"
    (checkout / "benchmarks").mkdir(parents=True)
    script = checkout / "benchmarks" / "pack_for_gpu.sh"
    shutil.copy(ROOT / "benchmarks" / "pack_for_gpu.sh", script)
    env = {"PATH": "/usr/bin:/bin"}
    r = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "../shared/data" in r.stderr and "DATA=" in r.stderr, r.stderr
