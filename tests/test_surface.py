"""The public surface: one version, written once; type hints shipped; precise return types."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import re
import tomllib
import typing
from pathlib import Path

import pytest

import mmcore

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {  # distribution -> (package folder, import name)
    "mmcore": (ROOT / "mmcore", "mmcore"),
    **{
        f"mmcore-{p}": (ROOT / "plugins" / p / "src" / f"mmcore_{p}", f"mmcore_{p}")
        for p in ("audio", "heads", "text", "vision")
    },
}


@pytest.mark.parametrize("dist", sorted(PACKAGES))
def test_the_version_is_read_from_the_metadata(dist: str) -> None:
    folder, name = PACKAGES[dist]
    assert importlib.import_module(name).__version__ == md.version(dist)
    literal = re.compile(r"""^__version__\s*[:=].*["']\d""", re.M)  # a version written in the source
    assert not [p for p in folder.rglob("*.py") if literal.search(p.read_text(encoding="utf-8"))]


@pytest.mark.parametrize("dist", sorted(PACKAGES))
def test_every_package_ships_py_typed(dist: str) -> None:
    folder, name = PACKAGES[dist]
    assert (folder / "py.typed").is_file()
    pyproject = folder.parent / "pyproject.toml" if dist == "mmcore" else folder.parent.parent / "pyproject.toml"
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["setuptools"]["package-data"]
    assert "py.typed" in data[name]


def test_public_functions_return_precise_types() -> None:
    import torch

    from mmcore.model import MultimodalGPT

    names = {"MultimodalGPT": MultimodalGPT, "Spec": mmcore.Spec, "TrainResult": mmcore.TrainResult, "nn": torch.nn}

    def returns(f: str) -> object:
        return eval(getattr(mmcore, f).__annotations__["return"], names)  # the annotation, resolved

    assert returns("build") is MultimodalGPT and returns("load") is MultimodalGPT
    assert returns("load_spec") is mmcore.Spec and returns("parse_spec") is mmcore.Spec
    assert returns("build_component") is torch.nn.Module
    assert typing.get_args(returns("train")) == (MultimodalGPT, mmcore.TrainResult)
