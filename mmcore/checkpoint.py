"""Model directories: :func:`save` and :func:`load`.

A model directory holds::

    spec.toml           the resolved spec, every default written out
    model.safetensors   the weights; metadata: format, spec, mmcore version, plugins
    processors/<input>/ each processor's files (a tokenizer, say)
    manifest.json       format, the mmcore version, the distribution of every component,
                        every plugin distribution with its version and the core versions
                        it declares (``distributions``), and the SHA-256 of every file
                        above (checked on load)

Loading first checks the recorded distributions against the installed ones
(:mod:`mmcore.provenance`): a missing or incompatible plugin is an error that says exactly
what to install (``pip install "mmcore-vision==0.1.0"``).

No pickle anywhere: loading parses TOML, JSON and safetensors and never executes code
from the directory. Saving writes a complete new directory next to the target and then
renames it into place, so an interrupted save leaves the previous one intact. Saving over
an existing directory moves the new files in one by one, manifest last, and keeps every
other file there (a process killed meanwhile leaves a directory without a manifest, never
one whose files disagree with it, and never loses the other files).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import ModelDirError, SpecError, WeightsError
from .interfaces import ResetsBuffers
from .io import atomic_write_bytes, atomic_write_text, check_state_dict, read_safetensors
from .spec import Spec, parse_spec_text, read_spec_file

if TYPE_CHECKING:
    from .model import MultimodalGPT

# atomic writes and the safetensors helpers live in mmcore/io.py; the names stay importable here
__all__ = ["save", "load", "FORMAT", "atomic_write_bytes", "atomic_write_text", "check_state_dict", "read_safetensors"]

FORMAT = "mmcore-model/1"
WEIGHTS = "model.safetensors"
SPEC = "spec.toml"
MANIFEST = "manifest.json"
PROCESSORS = "processors"
_MANAGED = {WEIGHTS, SPEC, MANIFEST, PROCESSORS}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- save ------------------------------------------------------------------------------


def _provenance(spec: Spec) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """(``kind:name`` -> ``distribution version``, distribution -> version, components, core range)."""
    from .plugins import get_manager
    from .provenance import record

    manager = get_manager()
    return record(spec, manager.registry, manager)


def _dedupe(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses shared storage: keep the first name, record the others as aliases."""
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    out, aliases = {}, {}
    for k, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else None
        if key is not None and key in seen:
            aliases[k] = seen[key]
            continue
        if key is not None:
            seen[key] = k
        out[k] = t.detach().to("cpu").contiguous()
    return out, aliases


def save(model: Any, directory: str | Path, *, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write ``model`` (a :class:`mmcore.MultimodalGPT` built from a spec) to ``directory``.

    Files other than the ones this function manages (metrics, plots, trainer state)
    are kept. Returns the directory.
    """
    from safetensors.torch import save_file

    from .version import __version__

    if getattr(model, "spec", None) is None:
        raise ModelDirError(
            "this model has no spec (it was composed from Python objects); set model.spec to a mmcore.Spec "
            "describing it, or save its state_dict with safetensors.torch.save_file"
        )
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    spec_text = model.spec.to_toml()
    state, aliases = _dedupe(model.state_dict())
    provenance, distributions = _provenance(model.spec)
    plugins = sorted(set(provenance.values()))
    quantization = getattr(model, "quantization", None) or getattr(getattr(model, "model", None), "quantization", None)
    meta = {
        "format": FORMAT,
        "mmcore_version": __version__,
        "spec": spec_text,
        "plugins": json.dumps(plugins),
        "distributions": json.dumps(distributions, sort_keys=True),
        "aliases": json.dumps(aliases),
        **({"quantization": json.dumps(quantization)} if quantization else {}),
        **(extra_metadata or {}),
    }
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.saving-"))
    try:
        save_file(state, str(tmp / WEIGHTS), metadata=meta)
        (tmp / SPEC).write_text(spec_text, encoding="utf-8")
        files = [WEIGHTS, SPEC]
        for name, proc in getattr(model, "processors", {}).items():
            pdir = tmp / PROCESSORS / name
            pdir.mkdir(parents=True)
            files += [f"{PROCESSORS}/{name}/{f}" for f in proc.save(str(pdir))]
        manifest = {
            "format": FORMAT,
            "mmcore_version": __version__,
            "components": provenance,
            "plugins": plugins,
            "distributions": distributions,
            **({"quantization": quantization} if quantization else {}),
            "sha256": {f: _sha256(tmp / f) for f in files},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        for p in tmp.rglob("*"):
            if p.is_file():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        if directory.exists():
            _replace_managed(tmp, directory)
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except OSError as exc:  # a full disk, a read-only folder: say which directory
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelDirError(f"{directory}: cannot write the model directory: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _replace_managed(new: Path, directory: Path) -> None:
    """Move the files :func:`save` manages from ``new`` into the existing ``directory``.

    Everything else in ``directory`` (checkpoints, metrics, plots) stays where it is and is
    never copied. The manifest leaves first and arrives last, so a process killed in between
    leaves a directory without a manifest (``load`` reports it incomplete, nothing mixes old
    and new files under a manifest); the previous files wait in ``.<name>.old-*`` beside it
    until the new ones are in place.
    """
    old = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.old-"))
    for name in (MANIFEST, WEIGHTS, SPEC, PROCESSORS):
        if (directory / name).exists():
            os.replace(directory / name, old / name)
    for name in (WEIGHTS, SPEC, PROCESSORS, MANIFEST):
        if (new / name).exists():
            os.replace(new / name, directory / name)
    shutil.rmtree(old, ignore_errors=True)


# --- load ------------------------------------------------------------------------------


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ModelDirError(f"{directory}: not a directory")
    if not path.is_file():
        raise ModelDirError(
            f"{directory}: not a model directory (no {MANIFEST}); a model directory holds {SPEC}, {WEIGHTS}, "
            f"{MANIFEST} and {PROCESSORS}/, as written by mmcore.save or mmcore train"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ModelDirError(f"{path}: unreadable manifest: {type(exc).__name__}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelDirError(
            f"{path}: unknown format {manifest.get('format') if isinstance(manifest, dict) else None!r}; expected {FORMAT!r}"
        )
    return manifest


def _verify(directory: Path, manifest: dict[str, Any]) -> None:
    sums = manifest.get("sha256")
    if not isinstance(sums, dict) or WEIGHTS not in sums or SPEC not in sums:
        raise ModelDirError(f"{directory / MANIFEST}: no checksums for {WEIGHTS} and {SPEC}")
    bad = []
    for name, digest in sums.items():
        if "\x00" in name:  # JSON keys are strings, but a NUL byte is no file name
            raise ModelDirError(f"{directory / MANIFEST}: file name {name!r} holds a NUL byte")
        p = (directory / name).resolve()
        if directory.resolve() not in p.parents:
            raise ModelDirError(f"{directory / MANIFEST}: file {name!r} lies outside the model directory")
        if not p.is_file():
            bad.append(f"{name} (missing)")
        elif _sha256(p) != digest:
            bad.append(f"{name} (content differs from the checksum)")
    if bad:
        ckpt = directory / "checkpoints"
        restore = (
            f"restore them from a copy, or rewrite the model from its last training checkpoint (run the same "
            f"`mmcore train` command again: it resumes from {ckpt})"
            if ckpt.is_dir()
            else "restore them from a copy, or save the model again"
        )
        raise WeightsError(
            f"{directory}: files were modified, truncated or are missing since the model was saved: "
            + ", ".join(bad)
            + f". What to do: {restore}; to load it anyway, unchecked, pass verify=False (`--no-verify` on the "
            "command line), only if you trust how the files changed"
        )


def _spec_for(directory: Path, manifest: dict[str, Any], registry: Any) -> Spec:
    try:
        text = read_spec_file(directory / SPEC)  # bounded, regular file only
    except SpecError as exc:
        raise ModelDirError(str(exc.issues[0])) from exc
    try:
        return parse_spec_text(text, file=str(directory / SPEC), registry=registry)
    except SpecError as exc:
        need = _missing_plugins(exc, manifest)
        if need:
            raise ModelDirError(
                f"{directory}: this model needs components that are not installed: "
                + "; ".join(f"{comp} ({advice})" for comp, advice in need)
            ) from exc
        raise


def _missing_plugins(exc: SpecError, manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """(component, how to install it) for each component the spec names that no installed
    plugin provides, with the advice :func:`provenance.install_advice` gives (a pinned pip
    command for a published plugin, where the saving machine had it from for another)."""
    from .provenance import install_advice

    comps = manifest.get("components") or {}
    out = []
    for issue in exc.issues:
        if issue.path.endswith(".component") and "unknown" in issue.message:
            for key, source in comps.items():
                name = key.split(":", 1)[1]
                if f"{name!r}" in issue.message:
                    dist, _, version = str(source).partition(" ")
                    out.append((key, install_advice(dist, version or None, manifest)))
    return out


def load(
    directory: str | Path,
    *,
    device: str | torch.device | None = None,
    verify: bool = True,
    registry: Any = None,
    check_versions: bool = True,
) -> MultimodalGPT:
    """Rebuild the model saved in ``directory`` (:func:`save`'s output) with its weights.

    The model is built on the meta device and the weights are assigned, so nothing is
    initialised twice (``weights_from`` sources in its spec are not read again).
    ``verify`` checks every file against the manifest's checksums. ``check_versions``
    first checks the recorded distributions against the installed ones
    (:func:`mmcore.provenance.check`). Raises :class:`ModelDirError` (incomplete directory,
    a plugin missing or of an incompatible version: says exactly what to ``pip install``)
    or :class:`WeightsError` (tampered or mismatched weights).

    Every plugin's ``mmcore_model_built`` hook is called once, with the loaded model (weights in
    place) and its spec.
    """
    from .builder import assemble

    directory = Path(directory)
    manifest = _read_manifest(directory)
    if check_versions:
        from .provenance import check
        from .version import __version__

        check(manifest, str(directory), __version__)
    if verify:
        _verify(directory, manifest)
    spec = _spec_for(directory, manifest, registry)
    state, meta = read_safetensors(directory / WEIGHTS, device or "cpu")
    if meta.get("spec") is not None and meta["spec"] != (directory / SPEC).read_text(encoding="utf-8"):
        raise WeightsError(f"{directory}: {SPEC} and the spec stored in {WEIGHTS} differ (was one of them edited?)")
    try:
        aliases = json.loads(meta.get("aliases", "{}"))
    except (ValueError, RecursionError) as exc:
        raise WeightsError(f"{directory / WEIGHTS}: corrupt alias table in metadata: {exc}") from exc
    if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
        raise WeightsError(f"{directory / WEIGHTS}: corrupt alias table in metadata: expected names -> names")
    model = assemble(spec, registry=registry, device="meta", weights=False)
    if meta.get("quantization"):  # int8 layers at the recorded names (mmcore.quantize)
        from .quantize import apply_quantization

        try:
            record = json.loads(meta["quantization"])
        except ValueError as exc:
            raise WeightsError(f"{directory / WEIGHTS}: corrupt quantization record in metadata: {exc}") from exc
        apply_quantization(model, record, where=str(directory / WEIGHTS))
    expected = model.state_dict()
    for alias, target in aliases.items():
        if target in state:
            state[alias] = state[target]
    check_state_dict(expected, state, source=str(directory / WEIGHTS))
    for k, t in state.items():  # assign=True keeps the file's dtype: give every tensor the model's
        if t.dtype != expected[k].dtype:
            state[k] = t.to(expected[k].dtype)
    model.load_state_dict(state, assign=True, strict=True)
    _materialize(model, device or "cpu")
    from .weights import LoadReport

    model.load_report = LoadReport.from_file(model, spec, str(directory / WEIGHTS))
    for name, proc in model.processors.items():
        pdir = directory / PROCESSORS / name
        if pdir.is_dir():
            proc.load(str(pdir))
    model.spec = spec
    from .plugins import get_manager

    get_manager().call_model_built(model, spec)
    return model


def _materialize(model: torch.nn.Module, device: str | torch.device) -> None:
    """Give tensors still on the meta device (non-persistent buffers) real values.

    Modules with such buffers implement ``reset_buffers()``; anything else left on the
    meta device is an error.
    """
    modules = dict(model.named_modules())
    pending: dict[str, None] = {}
    for name, module in modules.items():
        if any(b.is_meta for b in module.buffers(recurse=False)):
            module.to_empty(device=device, recurse=False)
            owner = name
            while not isinstance(modules[owner], ResetsBuffers):
                if not owner:
                    raise ModelDirError(
                        f"{name or 'the model'} ({type(module).__name__}) has buffers that are not saved, and neither "
                        f"it nor a parent module has reset_buffers() to recompute them"
                    )
                owner = owner.rpartition(".")[0]
            pending[owner] = None
    for owner in pending:  # after every meta buffer has storage
        modules[owner].reset_buffers()
    leftovers = [n for n, p in model.named_parameters() if p.is_meta]
    if leftovers:
        raise WeightsError(f"parameters not loaded: {', '.join(leftovers[:20])}")
    model.to(device)
