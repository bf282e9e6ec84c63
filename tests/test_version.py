"""medtextseg --version and medtextseg predict --version print the package's version, before any other check."""

import subprocess
import sys

from typer.testing import CliRunner

from medtextseg import __version__
from medtextseg.cli import app


def test_version_is_printed_by_the_app_and_by_predict():
    runner = CliRunner()
    for args in (["--version"], ["predict", "--version"], ["predict", "--version", "-p", "x"]):  # no -m needed
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert result.output == f"medtextseg {__version__}\n"
    assert runner.invoke(app, ["predict", "-p", "x"]).exit_code == 2  # without --version, -m is still required


def test_the_installed_command_prints_the_version():
    result = subprocess.run([sys.executable, "-m", "medtextseg.cli", "--version"], capture_output=True, text=True,
                            check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"medtextseg {__version__}"
