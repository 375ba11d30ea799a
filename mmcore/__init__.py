"""mmcore: compose multimodal GPT models from plugins and a declarative spec.

The public API is what ``__all__`` lists; plugins import only these names. Names that
need torch are imported on first access, so ``import mmcore`` (and listing plugins,
validating specs, ``mmcore --help``) stays fast and torch-free.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import BackboneConfig, ComponentConfig
from .errors import (
    DuplicateComponentError,
    InputError,
    MMCoreError,
    ModelDirError,
    PluginError,
    PluginLoadError,
    SpecError,
    SpecIssue,
    UnknownComponentError,
    WeightsError,
)
from .files import open_regular, regular_file_problem
from .hookspecs import hookimpl
from .io import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    check_state_dict,
    read_safetensors,
    write_safetensors,
)
from .registry import Component, Registry
from .types import IGNORE_INDEX, LM_LABELS, PROMPT_LEN, TargetField
from .version import __version__

# name -> module that defines it (imported lazily: these need torch)
_LAZY = {
    "Batch": "types",
    "Tokens": "types",
    "FusedSequence": "types",
    "HeadOutput": "types",
    "ModelOutput": "types",
    "Processor": "interfaces",
    "Encoder": "interfaces",
    "Fusion": "interfaces",
    "Head": "interfaces",
    "Projector": "interfaces",
    "Objective": "interfaces",
    "GPT": "backbone",
    "KVCache": "backbone",
    "MultimodalGPT": "model",
    "build": "builder",
    "build_component": "builder",
    "check_compatibility": "compatibility",
    "LoadReport": "weights",
    "LoRALinear": "lora",
    "merge_lora": "lora",
    "CoreOptions": "config",
    "LoraConfig": "config",
    "WeightsSource": "config",
    "save": "checkpoint",
    "load": "checkpoint",
    "Trainer": "trainer",
    "TrainResult": "trainer",
    "train": "trainer",
    "GenerationConfig": "generation",
    "generate": "generation",
    "generate_outputs": "outputs",
    "write_outputs": "outputs",
    "TrainingConfig": "config",
    "TaskConfig": "config",
    "Spec": "spec",
    "ComponentSpec": "spec",
    "load_spec": "spec",
    "parse_spec": "spec",
    "plugins": None,  # the module mmcore.plugins
}

__all__ = [
    "__version__",
    # configuration and spec
    "BackboneConfig",
    "ComponentConfig",
    "Spec",
    "ComponentSpec",
    "load_spec",
    "parse_spec",
    # plugins
    "hookimpl",
    "Component",
    "Registry",
    "plugins",
    # contracts and records
    "Processor",
    "Encoder",
    "Fusion",
    "Head",
    "Projector",
    "Objective",
    "TargetField",
    "IGNORE_INDEX",
    "LM_LABELS",
    "PROMPT_LEN",
    "Batch",
    "Tokens",
    "FusedSequence",
    "HeadOutput",
    "ModelOutput",
    # models
    "GPT",
    "KVCache",
    "MultimodalGPT",
    "build",
    "build_component",
    "check_compatibility",
    "LoadReport",
    "LoRALinear",
    "merge_lora",
    "CoreOptions",
    "LoraConfig",
    "WeightsSource",
    "save",
    "load",
    # training and generation
    "TrainingConfig",
    "TaskConfig",
    "Trainer",
    "TrainResult",
    "train",
    "GenerationConfig",
    "generate",
    "generate_outputs",
    "write_outputs",
    # files a plugin reads (regular files only; see docs/security.md)
    "open_regular",
    "regular_file_problem",
    # files a plugin writes and weights it reads (atomic writes, safetensors; mmcore/io.py)
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "write_safetensors",
    "read_safetensors",
    "check_state_dict",
    # errors
    "MMCoreError",
    "SpecError",
    "SpecIssue",
    "PluginError",
    "PluginLoadError",
    "DuplicateComponentError",
    "UnknownComponentError",
    "InputError",
    "WeightsError",
    "ModelDirError",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        mod = _LAZY[name]
        module = importlib.import_module(f".{mod or name}", __name__)
        value = module if mod is None else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mmcore' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs
    from . import plugins
    from .backbone import GPT, KVCache
    from .builder import build, build_component
    from .checkpoint import load, save
    from .compatibility import check_compatibility
    from .config import CoreOptions, LoraConfig, TaskConfig, TrainingConfig, WeightsSource
    from .generation import GenerationConfig, generate
    from .interfaces import Encoder, Fusion, Head, Processor, Projector
    from .lora import LoRALinear, merge_lora
    from .model import MultimodalGPT
    from .outputs import generate_outputs, write_outputs
    from .spec import ComponentSpec, Spec, load_spec, parse_spec
    from .trainer import Trainer, TrainResult, train
    from .types import Batch, FusedSequence, HeadOutput, ModelOutput, Tokens
    from .weights import LoadReport
