"""Packaging checks: the Dockerfile, the systemd unit, and the wheel the image installs.

``systemd-analyze verify`` insists that ExecStart= points at an executable file, and
/usr/local/bin/shipper only exists once the package is installed system-wide. So the
verify test copies the unit into a temporary directory with every /usr/local/bin/shipper
rewritten to this venv's ``shipper`` script and verifies that copy; the rest of the unit
is checked byte for byte as shipped.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
UNIT = ROOT / "systemd" / "shipper.service"
VENV_BIN = Path(sys.executable).parent
INSTALLED_SHIPPER = "/usr/local/bin/shipper"
MAX_EXPOSURE = 3.0  # systemd's "OK" band and better

# Exactly what the Dockerfile's builder stage copies in before `pip wheel`.
BUILD_CONTEXT = ("pyproject.toml", "README.md", "shipper")

TINY_CONFIG = """\
inputs:
  - paths: ["/tmp/x/*.log"]
kafka:
  bootstrap_servers: ["127.0.0.1:9092"]
  topic: logs
"""


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package: systemd)")
    return tool


def _run(cmd: list[str | Path], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    return subprocess.run(
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=cwd,
        timeout=240,
    )


def test_dockerfile_is_hadolint_clean() -> None:
    """Hadolint reports nothing at all (not even info) on the Dockerfile."""
    hadolint = VENV_BIN / "hadolint"
    assert hadolint.exists(), "hadolint missing from the venv: run `make venv` (dev extra)"
    res = _run([hadolint, "--no-color", DOCKERFILE])
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == "", res.stdout


def test_systemd_unit_verifies_cleanly(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit silently once ExecStart exists on disk."""
    tool = _systemd_analyze()
    shipper = VENV_BIN / "shipper"
    assert shipper.exists(), "the shipper console script is missing from the venv"
    text = UNIT.read_text(encoding="utf-8")
    assert f"ExecStart={INSTALLED_SHIPPER} run -c /etc/shipper/shipper.yaml" in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(INSTALLED_SHIPPER, str(shipper)), encoding="utf-8")
    res = _run([tool, "verify", copy])
    assert res.returncode == 0, res.stdout + res.stderr
    assert (res.stdout + res.stderr).strip() == "", res.stdout + res.stderr


def test_systemd_unit_exposure_is_low() -> None:
    """`systemd-analyze security --offline=true` rates the unit below MAX_EXPOSURE."""
    tool = _systemd_analyze()
    res = _run([tool, "security", "--offline=true", "--no-pager", UNIT])
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out)
    assert m, f"no exposure line in:\n{out}"
    assert float(m.group(1)) < MAX_EXPOSURE, out


@pytest.mark.slow
def test_wheel_installs_and_runs_in_a_fresh_venv(tmp_path: Path) -> None:
    """The Dockerfile's steps (pip wheel, pip install into a clean env) give a working CLI,
    and setuptools warns of nothing deprecated in the project's metadata while building."""
    src = tmp_path / "src"
    src.mkdir()
    for name in BUILD_CONTEXT:  # build from a copy so no build/ or egg-info lands in the repo
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif path.exists():
            shutil.copy2(path, src / name)
    wheels = tmp_path / "wheels"
    res = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "-w",
            wheels,
            src,
        ]
    )
    assert res.returncode == 0, res.stdout + res.stderr
    # pip shows the build backend's warnings (e.g. "`project.license` as a TOML table is
    # deprecated", fixed by an SPDX string) unless told to be quiet.
    assert "deprecat" not in (res.stdout + res.stderr).lower(), res.stdout + res.stderr
    (wheel,) = wheels.glob("shipper-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert "shipper/py.typed" in zf.namelist()

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    res = _run(
        [
            bin_dir / "python",
            "-m",
            "pip",
            "install",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "-q",
            wheel,
        ]
    )
    assert res.returncode == 0, res.stdout + res.stderr

    res = _run([bin_dir / "shipper", "--version"], cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith("shipper "), res.stdout

    config = tmp_path / "shipper.yaml"
    config.write_text(TINY_CONFIG, encoding="utf-8")
    configs = [config]
    if (ROOT / "config" / "shipper.yaml").exists():  # what the image ships
        configs.append(ROOT / "config" / "shipper.yaml")
    for path in configs:
        res = _run([bin_dir / "shipper", "validate", "-c", path], cwd=tmp_path)
        assert res.returncode == 0, f"{path}: {res.stdout}{res.stderr}"
