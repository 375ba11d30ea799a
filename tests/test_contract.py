"""The core reads of components only what mmcore/interfaces.py declares.

An AST check over mmcore/ (the conformance kit in mmcore/testing/ excepted: it probes the
documented conventions ``examples()`` and ``example_targets``): every ``getattr(x, "name")``
and ``hasattr(x, "name")`` names an attribute a contract class declares, or one of the
non-component objects listed below (Python, torch, the core's own classes), or one of the
component attributes still read without a declaration (``KNOWN_UNDECLARED``, to shrink, never
to grow). A declared capability has a default on its base class, so it is read, never probed
with ``hasattr``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import torch

from mmcore.interfaces import Encoder, Fusion, Head, Objective, Processor, Projector

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS = (Processor, Encoder, Projector, Fusion, Head, Objective)

#: Attributes of objects that are not components (each with what it belongs to).
NOT_COMPONENTS = {
    "O_NOCTTY": "os",
    "O_NONBLOCK": "os",
    "set_blocking": "os",
    "__dataclass_fields__": "dataclasses",
    "__dict__": "plugin modules (plugins.py: hook functions that match no hook specification)",
    "__name__": "types in docgen",
    "__notes__": "exceptions",
    "func": "argparse namespace",
    "_fit_start": "Trainer",
    "_last_checkpoint": "Trainer",
    "_tb": "Trainer",
    "_bar": "Trainer (set when fit opens its log)",
    "backbone": "MultimodalGPT",
    "config": "GPT (trainer) / processor options (export)",
    "width": "BackboneConfig",
    "bias": "nn.Linear",
    "dist": "importlib.metadata entry points",
    "load_report": "MultimodalGPT",
    "summary": "LoadReport",
    "model": "quantized model wrapper",
    "quantization": "quantized model",
    "no_sync": "DistributedDataParallel",
    "processors": "datasets",
    "record_sizes": "ManifestDataset",
    "where": "datasets",
    "spec": "MultimodalGPT",
    "tasks": "Spec",
    "step_linear": "the backbone's own layers",
    "weight": "Head.weight (declared) / nn.Linear",
}

#: Component attributes the core still reads without a declaration (to shrink, never to grow).
KNOWN_UNDECLARED: dict[str, str] = {}


def declared() -> set[str]:
    names: set[str] = set()
    for cls in CONTRACTS:
        for klass in cls.__mro__:
            if klass in (object, torch.nn.Module):
                break
            names |= set(vars(klass)) | set(getattr(klass, "__annotations__", {}))
    return {n for n in names if not n.startswith("__")}


def probes() -> list[tuple[str, str, str]]:
    """(call, attribute, file:line) of every getattr/hasattr with a literal name in mmcore/."""
    out = []
    for path in sorted((ROOT / "mmcore").rglob("*.py")):
        if "testing" in path.relative_to(ROOT / "mmcore").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr")
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
            ):
                out.append((node.func.id, node.args[1].value, f"{path.relative_to(ROOT)}:{node.lineno}"))
    return out


def test_the_core_reads_only_declared_component_attributes():
    ok = declared() | set(NOT_COMPONENTS) | set(KNOWN_UNDECLARED)
    bad = [(name, where) for _, name, where in probes() if name not in ok]
    assert not bad, f"undeclared attributes read by the core (declare them in mmcore/interfaces.py): {bad}"


def test_declared_capabilities_are_read_not_probed():
    names = declared() - set(NOT_COMPONENTS)
    bad = [(name, where) for call, name, where in probes() if call == "hasattr" and name in names]
    assert not bad, f"hasattr on a declared capability (it has a default; read it): {bad}"


def test_the_issue_list_is_declared():
    """The attributes the core used to probe without a contract are declared now."""
    want = {
        "project", "input", "vocab_size", "num_classes", "special_tokens_needed", "embed_step",
        "max_sequence_length", "max_tokens", "num_tokens", "takes_offset", "special_tokens", "eos_id",
        "pad_id", "mask_id", "output_ids", "decode",
    }  # fmt: skip
    assert want <= declared()


def test_known_undeclared_are_still_read():
    """An entry of KNOWN_UNDECLARED that the core no longer reads must go (the list only shrinks)."""
    read = {name for _, name, _ in probes()}
    assert set(KNOWN_UNDECLARED) <= read, set(KNOWN_UNDECLARED) - read


#: Names the core gives components (``proc = model.processors[name]``, ``for head in ...``).
COMPONENT_NAMES = {"proc", "processor", "enc", "encoder", "head", "fusion", "projector", "proj"}
COMPONENT_MAPS = {"processors", "encoders", "heads", "projectors"}


def plain_reads() -> list[tuple[str, str]]:
    """(attribute, file:line) of every plain attribute read on an expression that is a component:
    a variable with a component's name, ``<x>.processors[...]`` and the like, ``<x>.fusion``."""
    out = []
    for path in sorted((ROOT / "mmcore").rglob("*.py")):
        if "testing" in path.relative_to(ROOT / "mmcore").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Attribute) or not isinstance(node.ctx, ast.Load):
                continue
            v = node.value
            is_component = (
                (isinstance(v, ast.Name) and v.id in COMPONENT_NAMES)
                or (
                    isinstance(v, ast.Subscript)
                    and isinstance(v.value, ast.Attribute)
                    and v.value.attr in COMPONENT_MAPS
                )
                or (isinstance(v, ast.Attribute) and v.attr == "fusion")
            )
            if is_component:
                out.append((node.attr, f"{path.relative_to(ROOT)}:{node.lineno}"))
    return out


#: Plain reads on objects the heuristic above mistakes for components.
NOT_COMPONENT_READS = {
    "component": "spec.fusion, a ComponentSpec (the spec, not the module)",
    "options": "ComponentSpec",
    "core": "ComponentSpec",
    "to_dict": "ComponentSpec",
    "start": "multiprocessing.Process (loader.py's worker probe, named proc)",
    "join": "multiprocessing.Process",
    "is_alive": "multiprocessing.Process",
    "kill": "multiprocessing.Process",
    "exitcode": "multiprocessing.Process",
}


def test_the_core_reads_components_plainly_only_through_the_contract():
    """Plain reads (``proc.encode``, ``model.fusion.text_input``) are held to the contract too:
    a component's attribute the core reads is declared, or belongs to nn.Module."""
    module = set(dir(torch.nn.Module))
    ok = declared() | module | set(NOT_COMPONENTS) | set(NOT_COMPONENT_READS) | set(KNOWN_UNDECLARED)
    bad = [(name, where) for name, where in plain_reads() if name not in ok]
    assert not bad, f"undeclared component attributes read by the core (declare them in mmcore/interfaces.py): {bad}"
