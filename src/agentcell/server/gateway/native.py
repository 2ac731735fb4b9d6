"""Which build of the gateway's hot modules runs: mypyc-compiled, or the Python sources.

`scripts/compile_gateway.py` (run by `make setup`) compiles a few modules of this package in
place and writes `compiled.json`: each module's name and its source's SHA-256. An extension
module next to a `.py` is what Python imports, so an edit to a compiled module's source would be
silently ignored; `use_sources_when_stale()` (called as this package is imported, before any of
its modules) has every module of the build imported from its source instead when any source
changed since the build, or when AGENTCELL_PURE_PYTHON=1 (0 or empty: off). All or none:
compiled modules call each other's classes natively and refuse instances of their interpreted
twins.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

PURE_PYTHON_ENV = "AGENTCELL_PURE_PYTHON"
MANIFEST = Path(__file__).with_name("compiled.json")


class SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the listed modules' `.py` files, ahead of the extension modules beside them."""

    def __init__(self, sources: dict[str, Path]) -> None:
        self.sources = sources

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        source = self.sources.get(fullname)
        if source is None:
            return None
        loader = importlib.machinery.SourceFileLoader(fullname, str(source))
        return importlib.util.spec_from_file_location(fullname, source, loader=loader)


def build_state(manifest: Path = MANIFEST) -> tuple[str, dict[str, Path]]:
    """("compiled" | "stale" | "none", the build's modules and their source files). Stale: a
    source changed since the build, or an extension module is missing (or built for another
    Python)."""
    try:
        recorded = json.loads(manifest.read_text())["modules"]
    except (OSError, ValueError, KeyError, TypeError):
        return "none", {}
    if not isinstance(recorded, dict) or not recorded:
        return "none", {}
    sources = {name: manifest.with_name(name.rpartition(".")[2] + ".py") for name in recorded}
    for name, source in sources.items():
        try:
            current = hashlib.sha256(source.read_bytes()).hexdigest()
        except OSError:
            current = ""
        if current != recorded[name] or not _extension_of(source).exists():
            return "stale", sources
    return "compiled", sources


def _extension_of(source: Path) -> Path:
    """Where this interpreter would find the module's extension (another Python finds none)."""
    return source.with_name(source.stem + importlib.machinery.EXTENSION_SUFFIXES[0])


def use_sources_when_stale() -> str:
    """Install the source finder when it is needed; say which build runs ("compiled", "source")."""
    state, sources = build_state()
    if state == "none":
        return "source"
    if state == "stale" or os.environ.get(PURE_PYTHON_ENV, "0") not in ("", "0"):
        if not any(isinstance(finder, SourceFinder) for finder in sys.meta_path):
            sys.meta_path.insert(0, SourceFinder(sources))
        if state == "stale":
            log.warning(
                "the gateway's compiled modules are older than their sources: running the sources "
                "(slower); `make setup` compiles them again"
            )
        return "source"
    return "compiled"
