"""The `cellbox` command that the wheel installs."""

import shutil
import subprocess
import sys


def test_the_command_is_installed_and_runs_cells():
    cellbox = shutil.which("cellbox") or str(__import__("pathlib").Path(sys.executable).parent / "cellbox")
    version = subprocess.run([cellbox, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("cellbox ")
    run = subprocess.run([cellbox, "run", "--backend", "wasm", "-c", "x = 21", "-c", "x * 2"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "42" in run.stdout
    failing = subprocess.run([cellbox, "run", "--backend", "wasm", "-c", "1/0"], capture_output=True, text=True)
    assert failing.returncode == 1
    usage = subprocess.run([cellbox, "run", "--no-such-flag"], capture_output=True, text=True)
    assert usage.returncode == 2 and "--no-such-flag" in usage.stderr


def test_python_dash_m_is_the_same_command():
    run = subprocess.run([sys.executable, "-m", "cellbox", "--version"], capture_output=True, text=True, check=True)
    assert run.stdout.startswith("cellbox ")
