"""Composition: encoders -> projectors -> fusion -> GPT backbone -> heads, as one nn.Module.

:class:`MultimodalGPT` takes built modules (compose it yourself from Python objects), and
reports its parameters (:meth:`MultimodalGPT.summary`). :func:`mmcore.builder.build` is the
only code that reads a spec: it looks each component up in the registry, validates its
options, calls its factory, checks the parts fit (:mod:`mmcore.compatibility`), and hands the
results to :class:`MultimodalGPT`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .backbone import GPT
from .config import BackboneConfig
from .errors import InputError
from .interfaces import Encoder, Fusion, Head, Processor
from .records import TEXT_TARGET, RecordError, collate_targets, input_values, parse_targets
from .spec import Spec
from .types import Batch, FusedSequence, ModelOutput, TargetField, Tokens

__all__ = ["MultimodalGPT", "Summary", "SummaryRow"]


class MultimodalGPT(nn.Module):
    """A multimodal GPT: every part is a plain module you can hold, inspect and replace.

    Args:
        backbone: the :class:`mmcore.GPT` (built with ``inserts=fusion.inserts()`` when the
            fusion inserts layers).
        encoders: input name -> :class:`Encoder` (the input name is the record field it reads).
        fusion: the :class:`Fusion`.
        heads: head name -> :class:`Head`.
        projectors: input name -> projector, for encoders whose ``out_dim`` differs from
            the backbone width.
        processors: input name -> :class:`Processor` (not modules: they run in data loader
            workers). Used by :meth:`preprocess` and saved with the model.
    """

    def __init__(
        self,
        backbone: GPT,
        encoders: Mapping[str, Encoder],
        fusion: Fusion,
        heads: Mapping[str, Head] | None = None,
        projectors: Mapping[str, nn.Module] | None = None,
        processors: Mapping[str, Processor] | None = None,
    ):
        super().__init__()
        width = backbone.config.width
        projectors = dict(projectors or {})
        for name, enc in encoders.items():
            out = getattr(enc, "out_dim", width)
            if out != width and name not in projectors:
                raise ValueError(
                    f"encoder {name!r} produces width {out} but the backbone's is {width}: give a projector for it"
                )
        unknown = sorted(set(projectors) - set(encoders))
        if unknown:
            raise ValueError(f"projectors for unknown inputs {unknown}; inputs are {sorted(encoders)}")
        self.encoders = nn.ModuleDict(dict(encoders))
        self.projectors = nn.ModuleDict(projectors)
        self.fusion = fusion
        self.backbone = backbone
        self.heads = nn.ModuleDict(dict(heads or {}))
        self.processors: dict[str, Processor] = dict(processors or {})
        self.spec: Spec | None = None
        #: where each component's weights came from (:class:`mmcore.weights.LoadReport`); set by build
        self.load_report: Any = None

    @property
    def config(self) -> BackboneConfig:
        return self.backbone.config

    # --- the forward pass --------------------------------------------------------------

    def encode(self, batch: Batch) -> dict[str, Tokens]:
        """Run each encoder (and its projector) on its inputs: name -> Tokens (B, N, D)."""
        tokens = {}
        for name, enc in self.encoders.items():
            inputs = batch.inputs.get(name)
            if inputs is None:
                continue
            t = enc(inputs)
            if name in self.projectors:
                t = Tokens(self.projectors[name](t.embeds), t.mask)
            tokens[name] = t
        if not tokens:
            raise InputError(
                f"the batch has none of the model's inputs {list(self.encoders)}; it has {list(batch.inputs)}"
            )
        return tokens

    def fuse(self, batch: Batch) -> FusedSequence:
        """Encode and fuse: the sequence the backbone reads."""
        return self.fusion(self.encode(batch), batch)

    def forward(
        self,
        batch: Batch,
        *,
        mode: str | None = None,
        heads: Iterable[str] | None = None,
        compute_loss: bool = True,
    ) -> ModelOutput:
        """Encode, fuse, run the backbone and the heads.

        Args:
            batch: a collated :class:`Batch` on the model's device.
            mode: attention mode for this call (``causal``/``prefix``/``bidirectional``);
                default: the backbone's.
            heads: which heads to run (default: all).
            compute_loss: compute each head's loss where the batch has its targets.
        """
        seq = self.fuse(batch)
        hidden = self.backbone.run_sequence(seq, mode)  # (B, L, D)
        names = list(self.heads) if heads is None else list(heads)
        outputs, losses = {}, {}
        total: Tensor | None = None
        for name in names:
            head = self.heads[name]
            out = head(hidden, seq)
            outputs[name] = out
            if compute_loss:
                loss = head.loss(out, batch)
                if loss is not None:
                    losses[name] = loss
                    w = float(getattr(head, "weight", 1.0))
                    total = loss * w if total is None else total + loss * w
        return ModelOutput(hidden=hidden, sequence=seq, outputs=outputs, losses=losses, loss=total)

    # --- data ----------------------------------------------------------------------------

    def preprocess(
        self,
        records: Sequence[Mapping[str, Any]],
        *,
        targets: Iterable[str | TargetField] = ("label",),
        text_input: str | None = "text",
        target_field: str | None = TEXT_TARGET,
    ) -> Batch:
        """Turn raw records (``{"text": "...", "image": "a.png", "label": 3}``) into a Batch.

        Records are read as the trainer's loader reads a manifest's (:mod:`mmcore.records`,
        the one implementation): the text input becomes a ``{"prompt", "target"}`` pair when a
        record holds ``target_field`` (the loss is then on the target), and ``targets`` are
        checked as declared (an objective's :class:`~mmcore.TargetField` list, e.g.
        ``objective.targets()``; a plain name is an optional integer label). Each input is run
        through its processor; a record without an input gets a masked-out row. A target
        present in every record becomes ``batch.targets`` (string targets:
        ``batch.meta["targets"]``). A problem raises :class:`~mmcore.errors.InputError` naming
        the record and the field.
        """
        fields = [t if isinstance(t, TargetField) else TargetField(t, "integer", required=False) for t in targets]
        values, parsed = [], []
        for i, r in enumerate(records):
            try:
                values.append(input_values(r, self.processors, text_input=text_input, target_field=target_field))
                parsed.append(parse_targets(r, fields))
            except RecordError as exc:
                raise InputError(f"record {i} {exc}") from None
        inputs = {}
        for name, proc in self.processors.items():
            if all(v[name] is None for v in values):
                continue
            samples = [
                proc(v[name], where=f"record {i} field {name!r}") if v[name] is not None else None
                for i, v in enumerate(values)
            ]
            inputs[name] = proc.collate(samples)
        if not inputs:
            raise InputError(f"no record has any of the model's inputs {list(self.processors)}")
        tgt, strings = collate_targets(parsed, fields)
        return Batch(inputs, tgt, {"targets": strings} if strings else {}).to(self.device)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # --- inspection ------------------------------------------------------------------------

    def parts(self) -> list[tuple[str, nn.Module]]:
        """(name, module) for every component, in data-flow order."""
        out: list[tuple[str, nn.Module]] = []
        for k, m in self.encoders.items():
            out.append((f"encoders.{k}", m))
            if k in self.projectors:
                out.append((f"projectors.{k}", self.projectors[k]))
        out.append(("fusion", self.fusion))
        out.append(("backbone", self.backbone))
        out += [(f"heads.{k}", m) for k, m in self.heads.items()]
        return out

    def summary(self) -> "Summary":
        """Parameters per component: trainable, frozen and LoRA adapters (shared weights counted once).

        The layers a fusion inserts into the backbone count as the fusion's (its training
        policy governs them).
        """
        from .lora import is_lora_param

        rows: dict[str, dict[str, Any]] = {}
        for part, module in self.parts():
            rows[part] = {"component": _component_name(self, part, module), "params": 0, "trainable": 0, "lora": 0}
            rows[part]["names"] = []
        for name, p in self.named_parameters():  # deduplicated: a shared tensor appears once
            part = _part_of(name)
            if part not in rows:
                continue
            r = rows[part]
            r["params"] += p.numel()
            if p.requires_grad:
                r["trainable"] += p.numel()
                r["names"].append(name[len(part) + 1 :] if not name.startswith("backbone.inserts.") else name[9:])
            if is_lora_param(name):
                r["lora"] += p.numel()
        policies = _policies(self)
        return Summary(
            self.spec.name if self.spec else "model",
            [
                SummaryRow(
                    part,
                    r["component"],
                    r["params"],
                    r["trainable"],
                    lora=r["lora"],
                    train=policies.get(part, "full"),
                    trainable_names=tuple(r["names"]),
                )
                for part, r in rows.items()
            ],
        )


def _part_of(param: str) -> str:
    """The summary part a model parameter name belongs to (inserted layers: the fusion)."""
    if param.startswith("backbone.inserts."):
        return "fusion"
    head, _, rest = param.partition(".")
    if head in ("encoders", "projectors", "heads"):
        return f"{head}.{rest.partition('.')[0]}"
    return head


def _section_of(part: str) -> str:
    """Summary part -> spec section (``projectors.x`` -> ``encoders.x.projector``)."""
    return f"encoders.{part[11:]}.projector" if part.startswith("projectors.") else part


def _policies(model: MultimodalGPT) -> dict[str, str]:
    if model.spec is None:
        return {}
    core = model.spec.core_options()
    return {part: core[_section_of(part)].train for part, _ in model.parts() if _section_of(part) in core}


def _component_name(model: MultimodalGPT, part: str, module: nn.Module) -> str:
    if model.spec is not None:
        for path, c in model.spec.components():
            if path == part or (part.startswith("projectors.") and path == f"encoders.{part[11:]}.projector"):
                return c.component
    return type(module).__name__


@dataclass(frozen=True)
class SummaryRow:
    """One component's parameter counts.

    ``train`` is its policy (``full``, ``frozen``, ``lora``); ``lora`` counts the adapter
    parameters (trainable, included in ``params`` and ``trainable``); ``trainable_names`` are
    the names (inside the component) of the parameters that train.
    """

    part: str
    component: str
    params: int
    trainable: int
    lora: int = 0
    train: str = "full"
    trainable_names: tuple[str, ...] = ()

    @property
    def frozen(self) -> int:
        return self.params - self.trainable


@dataclass(frozen=True)
class Summary:
    """Parameter counts per component; ``str()`` gives a table, then which parameters train
    in every component that does not train in full."""

    name: str
    rows: list[SummaryRow]

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def trainable(self) -> int:
        return sum(r.trainable for r in self.rows)

    @property
    def lora(self) -> int:
        return sum(r.lora for r in self.rows)

    def __str__(self) -> str:
        from .lora import condense

        with_lora = any(r.lora for r in self.rows)
        head = ["component", "type", "train", "params", "trainable", "frozen"] + (["lora"] if with_lora else [])
        body = [
            [r.part, r.component, r.train, _n(r.params), _n(r.trainable), _n(r.frozen)]
            + ([_n(r.lora)] if with_lora else [])
            for r in self.rows
        ]
        foot = ["total", "", "", _n(self.params), _n(self.trainable), _n(self.params - self.trainable)]
        foot += [_n(self.lora)] if with_lora else []
        cols = len(head)
        widths = [max(len(str(row[i])) for row in [head, *body, foot]) for i in range(cols)]

        def fmt(row: Sequence[str]) -> str:
            left = [str(row[i]).ljust(widths[i]) for i in range(3)]
            right = [str(row[i]).rjust(widths[i]) for i in range(3, cols)]
            return "  ".join(left + right).rstrip()

        rule = "-" * len(fmt(head))
        lines = [f"model {self.name!r}", fmt(head), rule, *map(fmt, body), rule, fmt(foot)]
        partial = [r for r in self.rows if r.train != "full" or r.trainable != r.params]
        if partial:
            lines.append("trains:")
            for r in partial:
                what = condense(r.trainable_names) if r.trainable_names else "nothing"
                lines.append(f"  {r.part}: {what}")
        return "\n".join(lines)


def _n(x: int) -> str:
    return f"{x:,}"
