"""native: the compiled gateway modules run only while every source matches the build."""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
from pathlib import Path

from agentcell.server.gateway.native import SourceFinder, build_state

MODULES = ("pkg.alpha", "pkg.beta")


def _build(tmp_path: Path) -> Path:
    """A package with two sources and the manifest a build of them writes."""
    recorded = {}
    for name in MODULES:
        source = tmp_path / (name.rpartition(".")[2] + ".py")
        source.write_text(f"NAME = {name!r}\n")
        recorded[name] = hashlib.sha256(source.read_bytes()).hexdigest()
        source.with_suffix(importlib.machinery.EXTENSION_SUFFIXES[0]).write_bytes(b"\x7fELF")
    manifest = tmp_path / "compiled.json"
    manifest.write_text(json.dumps({"python": "cpython-311", "modules": recorded}))
    return manifest


def test_a_build_whose_sources_match_runs(tmp_path: Path) -> None:
    state, sources = build_state(_build(tmp_path))
    assert state == "compiled"
    assert sources == {"pkg.alpha": tmp_path / "alpha.py", "pkg.beta": tmp_path / "beta.py"}


def test_a_missing_extension_makes_the_whole_build_stale(tmp_path: Path) -> None:
    manifest = _build(tmp_path)
    (tmp_path / "alpha.py").with_suffix(importlib.machinery.EXTENSION_SUFFIXES[0]).unlink()
    assert build_state(manifest)[0] == "stale"


def test_one_edited_or_missing_source_makes_the_whole_build_stale(tmp_path: Path) -> None:
    manifest = _build(tmp_path)
    (tmp_path / "beta.py").write_text("NAME = 'edited'\n")
    assert build_state(manifest)[0] == "stale"
    (tmp_path / "beta.py").unlink()
    state, sources = build_state(manifest)
    assert state == "stale" and set(sources) == set(MODULES)  # (all are loaded from source then)


def test_no_manifest_or_a_broken_one_means_no_build(tmp_path: Path) -> None:
    manifest = tmp_path / "compiled.json"
    assert build_state(manifest) == ("none", {})
    manifest.write_text("{not json")
    assert build_state(manifest) == ("none", {})
    manifest.write_text('{"modules": []}')
    assert build_state(manifest) == ("none", {})


def test_the_finder_loads_listed_modules_from_their_sources_only(tmp_path: Path) -> None:
    _build(tmp_path)
    finder = SourceFinder({"pkg.alpha": tmp_path / "alpha.py"})
    spec = finder.find_spec("pkg.alpha", None)
    assert spec is not None and spec.origin == str(tmp_path / "alpha.py")
    assert finder.find_spec("pkg.beta", None) is None
