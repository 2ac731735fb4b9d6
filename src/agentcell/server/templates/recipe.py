"""A recipe as build steps (argv run inside the build sandbox) and the env its instances get.

Pure but for `layer_dirs_of`, which looks at a built layer. User values (package names, commands)
are never pasted into a script: a step's script is a constant and the values travel as its
positional arguments ("$@").
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from agentcell.protocol.templates import BUILD_DIR, TEMPLATE_ROOT, Recipe
from agentcell.server.sandbox.driver import SANDBOX_PATH

PYTHON_DIR = f"{TEMPLATE_ROOT}/python"
NODE_DIR = f"{TEMPLATE_ROOT}/node"
APT_DIR = f"{TEMPLATE_ROOT}/apt"

_APT_SCRIPT = (
    'set -e; mkdir -p "$HOME/apt" && cd "$HOME/apt"; apt-get download -- "$@"; '
    f'for deb in ./*.deb; do echo "unpacking $deb"; dpkg-deb -x "$deb" {APT_DIR}; done'
)
_PIP_ARGS = [
    "/usr/bin/python3",
    "-m",
    "pip",
    "install",
    "--target",
    PYTHON_DIR,
    "--no-cache-dir",
    "--disable-pip-version-check",
    "--no-warn-script-location",
    "--progress-bar",
    "off",
]
_NPM_ARGS = [
    "npm",
    "install",
    "--global",
    "--prefix",
    NODE_DIR,
    "--no-fund",
    "--no-audit",
    "--no-update-notifier",
]


@dataclass(frozen=True, slots=True)
class BuildStep:
    name: str
    """what the build log shows (package names, the command's first line)"""
    argv: list[str]


def build_steps(recipe: Recipe) -> list[BuildStep]:
    """Steps in recipe order: apt, pip, npm, then each command (files are written before)."""
    steps: list[BuildStep] = []
    if recipe.apt:
        steps.append(
            BuildStep(f"apt {' '.join(recipe.apt)}", ["/bin/bash", "-c", _APT_SCRIPT, "apt", *recipe.apt])
        )
    if recipe.pip:
        steps.append(
            BuildStep(
                f"pip install {' '.join(recipe.pip)}", [*_PIP_ARGS, *_pip_source(recipe), "--", *recipe.pip]
            )
        )
    if recipe.npm:
        offline = ["--offline"] if all(spec.startswith("./") for spec in recipe.npm) else []
        steps.append(
            BuildStep(f"npm install {' '.join(recipe.npm)}", [*_NPM_ARGS, *offline, "--", *recipe.npm])
        )
    for command in recipe.commands:
        first = command.strip().splitlines()[0] if command.strip() else command
        steps.append(BuildStep(f"run {first[:120]}", ["/bin/bash", "-c", command]))
    return steps


def _pip_source(recipe: Recipe) -> list[str]:
    args = ["--find-links", BUILD_DIR] if recipe.files else []
    if recipe.pip_no_index:
        args.append("--no-index")
    elif recipe.pip_index_url:
        args += ["--index-url", recipe.pip_index_url]
    return args


LAYER_PATHS = {
    "PATH": ("bin", "python/bin", "node/bin", "apt/usr/bin", "apt/usr/sbin", "apt/usr/games"),
    "PYTHONPATH": ("python", "apt/usr/lib/python3/dist-packages"),
    "NODE_PATH": ("node/lib/node_modules",),
    "LD_LIBRARY_PATH": ("apt/usr/lib/x86_64-linux-gnu", "apt/usr/lib"),
}
"""env variables the layer's directories (relative to /opt/template) are put on, in order"""


def template_env(recipe: Recipe, layer_dirs: Collection[str] | None = None) -> dict[str, str]:
    """What every instance of the template gets: the layer's tools on PATH, its Python packages
    first on sys.path, its node modules on NODE_PATH, its apt libraries on LD_LIBRARY_PATH; then
    the recipe's own env, which wins. `layer_dirs`: the directories the built layer has (only
    those are listed: every PATH entry costs each exec a lookup); None while building (all)."""
    env = {"AGENTCELL_TEMPLATE_ROOT": TEMPLATE_ROOT}
    for name, dirs in LAYER_PATHS.items():
        present = [f"{TEMPLATE_ROOT}/{d}" for d in dirs if layer_dirs is None or d in layer_dirs]
        if name == "PATH":
            present.append(SANDBOX_PATH)  # (the sandbox's own, after the template's dirs)
        if present:
            env[name] = ":".join(present)
    return {**env, **recipe.env}


def layer_dirs_of(layer: Path) -> set[str]:
    """Which of the directories template_env knows the built layer has (real directories all the
    way down: a symlink the recipe left must not make the node look outside the layer)."""
    known = {d for dirs in LAYER_PATHS.values() for d in dirs}
    return {d for d in known if _is_real_dir(layer, d)}


def _is_real_dir(layer: Path, relative: str) -> bool:
    path = layer
    for part in relative.split("/"):
        path = path / part
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return False
        except OSError:
            return False
    return True
