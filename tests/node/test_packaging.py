"""The installed package: twistd finds the faasgate plugin, the CLI script exists."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.process  # starts real processes


def _clean_env() -> dict[str, str]:
    # no PYTHONPATH: what a regular `pip install .` put into site-packages, nothing else
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_twistd_lists_the_installed_faasgate_plugin(tmp_path):
    done = subprocess.run([str(BIN / "twistd"), "--help"], capture_output=True, text=True,
                          cwd=tmp_path, env=_clean_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines()]
    assert ["faasgate", "FaaS", "gateway", "and", "controller", "for", "Knative"] in lines


def test_the_plugin_is_three_lines_with_no_package_init():
    plugin = ROOT / "twisted" / "plugins" / "faasgate.py"
    assert len(plugin.read_text().strip().splitlines()) == 3
    assert not (ROOT / "twisted" / "__init__.py").exists()
    assert not (ROOT / "twisted" / "plugins" / "__init__.py").exists()


def test_faasgate_help_describes_its_options(tmp_path):
    done = subprocess.run([str(BIN / "twistd"), "faasgate", "--help"], capture_output=True,
                          text=True, cwd=tmp_path, env=_clean_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    for option in ("--config", "--admin-port", "--gate-port", "--log-format"):
        assert option in done.stdout
