"""Model directories record the distributions they need; loading says exactly what to pip install."""

from __future__ import annotations

import importlib.metadata
import json
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

import mmcore
from mmcore.errors import ModelDirError
from mmcore.provenance import compatible, core_range

SPEC = {
    "spec_version": 1,
    "name": "prov",
    "backbone": {"width": 32, "depth": 1, "heads": 4, "context_length": 64},
    "encoders": {
        "image": {"component": "vision.patch", "image_size": 16, "patch_size": 8, "dim": 16, "depth": 1, "heads": 2},
        "text": {"component": "text.bytes", "max_length": 32},
    },
    "heads": {"lm": {"component": "lm"}},
}


@pytest.fixture
def saved(tmp_path, manager):
    return mmcore.save(mmcore.build(SPEC), tmp_path / "m")


def fake_installed(monkeypatch, name: str, version: str | None, requires: list[str] | None = None) -> None:
    """Make importlib.metadata report ``name`` as not installed (None) or at ``version``."""
    real = importlib.metadata.distribution

    def distribution(dist_name: str):
        if dist_name == name:
            if version is None:
                raise importlib.metadata.PackageNotFoundError(name)
            return SimpleNamespace(version=version, requires=requires or [])
        return real(dist_name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)


def test_every_used_plugin_is_recorded_with_its_version_and_the_core(saved):
    manifest = json.loads((saved / "manifest.json").read_text())
    dists = manifest["distributions"]
    assert set(dists) == {"mmcore-vision", "mmcore-text", "mmcore-heads"}  # the core is recorded on its own
    vision = dists["mmcore-vision"]
    assert vision["version"] == importlib.metadata.version("mmcore-vision")
    assert vision["components"] == ["encoder:vision.patch"]
    assert vision["requires_mmcore"] == "<0.2,>=0.1"
    assert manifest["mmcore_version"] == mmcore.__version__
    with safe_open(str(saved / "model.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["distributions"]) == dists


def test_missing_plugin_says_exactly_what_to_install(saved, monkeypatch):
    version = importlib.metadata.version("mmcore-vision")
    fake_installed(monkeypatch, "mmcore-vision", None)
    with pytest.raises(ModelDirError) as info:
        mmcore.load(saved)
    msg = str(info.value)
    assert f'mmcore-vision {version} is not installed: pip install "mmcore-vision=={version}"' in msg
    assert "mmcore-text" not in msg  # only what is wrong


def test_another_major_version_says_what_to_install(saved, monkeypatch):
    version = importlib.metadata.version("mmcore-vision")
    fake_installed(monkeypatch, "mmcore-vision", "1.2.0", ["mmcore>=0.1"])
    with pytest.raises(ModelDirError) as info:
        mmcore.load(saved)
    msg = str(info.value)
    assert f"mmcore-vision 1.2.0 is installed but the model was saved with {version}" in msg
    assert f'pip install "mmcore-vision=={version}"' in msg


def test_a_plugin_that_does_not_accept_this_core_says_what_to_install(saved, monkeypatch):
    version = importlib.metadata.version("mmcore-vision")
    fake_installed(monkeypatch, "mmcore-vision", version, ["mmcore>=0.5,<0.6", "timm"])
    with pytest.raises(ModelDirError) as info:
        mmcore.load(saved)
    msg = str(info.value)
    assert f"declares that it works with mmcore<0.6,>=0.5, but mmcore {mmcore.__version__} is installed" in msg
    assert f'pip install "mmcore-vision=={version}"' in msg


def test_tampered_manifest_version_and_core(saved, monkeypatch):
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest["distributions"]["mmcore-text"]["version"] = "0.3.1"
    manifest["mmcore_version"] = "2.0.0"
    (saved / "manifest.json").write_text(json.dumps(manifest))  # the manifest holds the checksums, not its own
    with pytest.raises(ModelDirError) as info:
        mmcore.load(saved)
    msg = str(info.value)
    assert 'pip install "mmcore-text==0.3.1"' in msg
    assert "saved with mmcore 2.0.0" in msg and 'pip install "mmcore==2.0.0"' in msg
    # the check can be skipped on purpose; the model itself is intact
    model = mmcore.load(saved, check_versions=False)
    assert isinstance(model.backbone, torch.nn.Module)


def test_compatible_patch_release_loads(saved, monkeypatch):
    fake_installed(monkeypatch, "mmcore-vision", "0.1.9", ["mmcore>=0.1,<0.2"])
    assert mmcore.load(saved).encoders["image"].num_tokens == 4


def test_older_manifests_without_distributions_are_checked_from_their_components(saved, monkeypatch):
    manifest = json.loads((saved / "manifest.json").read_text())
    del manifest["distributions"]
    (saved / "manifest.json").write_text(json.dumps(manifest))
    fake_installed(monkeypatch, "mmcore-heads", None)
    with pytest.raises(ModelDirError, match=r'pip install "mmcore-heads==0\.1\.0"'):
        mmcore.load(saved)


def test_release_series_and_core_ranges():
    assert compatible("0.1.0", "0.1.7") and not compatible("0.1.0", "0.2.0") and not compatible("0.1.0", "1.0.0")
    assert compatible("1.2.0", "1.9.1") and not compatible("1.2.0", "2.0.0")
    assert core_range(["torch>=2", "mmcore>=0.1,<0.2", 'mmcore-extra; extra == "x"']) == "<0.2,>=0.1"
    assert core_range(["torch"]) is None
