"""JSON Schema of a spec, including the options of every installed component (``mmcore spec schema``)."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .config import BackboneConfig, CoreOptions, TaskConfig, TrainingConfig
from .registry import Component, Registry
from .spec import SPEC_VERSION

__all__ = ["spec_json_schema"]

# --- JSON Schema ---------------------------------------------------------------------------


def spec_json_schema(registry: Registry | None = None) -> dict[str, Any]:
    """JSON Schema of a spec, including the options of every installed component."""
    if registry is None:
        from .plugins import get_registry

        registry = get_registry()
    comps = list(registry)
    mode: Literal["validation"] = "validation"
    models: list[tuple[type[BaseModel], Literal["validation", "serialization"]]]
    models = [(BackboneConfig, mode), (TrainingConfig, mode), (TaskConfig, mode), (CoreOptions, mode)]
    models += [(c.config, mode) for c in comps]
    refs, top = models_json_schema(models, ref_template="#/$defs/{model}")
    defs = top.get("$defs", {})

    def inline(model: type[BaseModel]) -> dict[str, Any]:
        ref = refs[(model, "validation")]["$ref"].split("/")[-1]
        return json.loads(json.dumps(defs[ref]))

    core_props = inline(CoreOptions).get("properties", {})
    core_props["weights_from"] = {
        "anyOf": [{"type": "string"}, core_props["weights_from"]],
        "default": None,
        "description": core_props["weights_from"].get("description", ""),
    }
    core_props["freeze"] = {"type": "boolean", "default": False, "description": 'Same as train = "frozen".'}

    def variant(c: Component) -> dict[str, Any]:
        s = inline(c.config)
        props = s.setdefault("properties", {})
        props["component"] = {"const": c.name, "description": c.description or c.name}
        props.update(json.loads(json.dumps(core_props)))
        if c.kind == "encoder":
            props["projector"] = {
                "anyOf": [{"enum": registry.names("projector")}, {"$ref": "#/$defs/__projector"}],
                "default": "linear",
                "description": "Projector used when the encoder's width differs from the backbone's.",
            }
        s["required"] = sorted(set(s.get("required", [])) | {"component"})
        s["additionalProperties"] = False
        s["title"] = f"{c.kind}:{c.name}"
        return s

    def one_of(kind: str) -> dict[str, Any]:
        variants = [variant(c) for c in comps if c.kind == kind]
        return {"anyOf": variants} if variants else {"not": {}}

    defs["__projector"] = one_of("projector")
    task_def = defs[refs[(TaskConfig, "validation")]["$ref"].split("/")[-1]]
    task_def.setdefault("properties", {})["objective"] = {
        "anyOf": [
            {"const": c.name, "title": c.key, "description": c.description} for c in comps if c.kind == "objective"
        ]
        or [{"type": "string"}],
        "description": task_def.get("properties", {}).get("objective", {}).get("description", ""),
    }
    backbone_ref = refs[(BackboneConfig, "validation")]
    backbone_def = defs[backbone_ref["$ref"].split("/")[-1]]
    backbone_def.setdefault("properties", {}).update(json.loads(json.dumps(core_props)))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "mmcore spec",
        "type": "object",
        "additionalProperties": False,
        "required": ["spec_version", "encoders"],
        "properties": {
            "spec_version": {"const": SPEC_VERSION},
            "name": {"type": "string", "default": "model"},
            "description": {"type": "string", "default": ""},
            "backbone": backbone_ref,
            "encoders": {"type": "object", "minProperties": 1, "additionalProperties": one_of("encoder")},
            "fusion": one_of("fusion"),
            "heads": {"type": "object", "additionalProperties": one_of("head")},
            "training": refs[(TrainingConfig, "validation")],
            "tasks": {"type": "object", "additionalProperties": refs[(TaskConfig, "validation")]},
        },
        "$defs": defs,
    }
