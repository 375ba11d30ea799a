"""The contracts a plugin implements: Processor, Encoder, Fusion, Head, Projector, Objective.

Each base class's docstring *is* the contract; :mod:`mmcore.testing` checks it. Every
component except the Processor is a plain ``torch.nn.Module``: you can hold it, inspect
it, move it and call it in your own loop.

How the builder calls a component's factory (``Component.factory``), by kind:

* encoder:   ``factory(config, *, width, processor, base_dir)`` -- ``width`` is the backbone
  width (an encoder may ignore it and declare its own ``out_dim``); ``processor`` is the
  Processor built for it, or None; ``base_dir`` is the folder relative paths in options
  (weights files) resolve against: the spec file's folder, else the working directory.
* projector: ``factory(config, *, in_dim, out_dim)``.
* fusion:    ``factory(config, *, width, encoders, backbone, base_dir)`` -- ``encoders`` maps
  input names to built encoders; ``backbone`` is the :class:`~mmcore.BackboneConfig`.
* head:      ``factory(config, *, width, encoders, backbone, base_dir)``.
* objective: ``factory(config, *, task, head, model, where)`` -- see :class:`Objective`;
  built when a task is trained or evaluated, not by :func:`mmcore.build`.

A factory may accept only the keyword arguments it needs.

Every module must survive being built on the meta device and loaded with
``load_state_dict(assign=True)`` (that is how :func:`mmcore.load` avoids initialising
weights twice): a module with non-persistent buffers implements ``reset_buffers()`` to
recompute them (on the module itself or on an ancestor: the nearest ancestor that has
``reset_buffers()`` is called for a submodule that does not, e.g. a wrapped third-party
model).

Where these docs say "input", they mean the name of an ``[encoders.<name>]`` section
(the record field it reads); an encoder's *modality* is the kind of data it reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .registry import call_factory
from .types import Batch, FusedSequence, HeadOutput, ModelOutput, TargetField, Tokens

__all__ = ["Processor", "Encoder", "Fusion", "Head", "Projector", "Objective", "ResetsBuffers", "call_factory"]


class Processor:
    """Turns one raw value of a modality into tensors, and a list of those into a batch.

    Contract:

    * ``modality``: the kind of data it reads (``"text"``, ``"image"``, ``"audio"``...).
    * ``__call__(value, *, where="")`` -> ``dict[str, Tensor]`` for one sample. ``value``
      is what a record holds (a string, a path, bytes, an array). Bad input raises
      :class:`mmcore.InputError` whose message includes ``where`` (the record and field,
      e.g. ``"train.jsonl:12 field 'image'"``) and the reason.
    * ``collate(samples)`` -> ``dict[str, Tensor]`` for a batch. ``samples`` may contain
      ``None`` for records that lack this modality; the result marks them -- an all-False
      ``mask`` row for variable-length inputs, or a ``present`` (B,) bool for fixed-size
      ones (images) -- so the encoder masks them out: never a zero image passed off as
      real. Sequences are right-padded.
    * Deterministic, picklable (it runs in DataLoader workers) and free of ``nn.Module``
      state. Random augmentation, where a processor offers it, happens only while its
      ``training`` attribute is True (the data pipeline sets it for training data).
    * ``save(directory)`` writes the files it needs to be rebuilt (a tokenizer, say);
      ``load(directory)`` reads them back. Both are optional.
    """

    modality: ClassVar[str] = ""
    training: bool = False

    # --- capabilities the core reads (defaults: the processor has none of them) ----------
    #: Token processors (text, image tokens): special token name -> id (``{"<mask>": 4}``).
    special_tokens: Mapping[str, int] = MappingProxyType({})
    #: Token processors: the ids of ``<bos>``, ``<eos>``, ``<pad>``, ``<mask>``, ``<sep>`` (None: none).
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    mask_id: int | None = None
    sep_id: int | None = None
    #: Token processors: how many ids it makes (the encoder's vocabulary must hold them).
    vocab_size: int | None = None
    #: The most tokens (text) or positions it makes for one value (None: unbounded or unknown).
    max_length: int | None = None
    #: Processors whose ids a head generates: the most ids one generated output needs.
    max_tokens: int | None = None
    #: Processors whose ids a head generates: the ids a generated output may hold (None: any).
    output_ids: Sequence[int] | None = None
    #: Processors whose generated outputs can be written to files (:meth:`save_output`): the
    #: file suffixes they write (``(".png",)``). Empty (the default): they write none, and
    #: ``mmcore generate --out`` refuses the input, naming the processor.
    output_suffixes: Sequence[str] = ()
    #: Image processors that normalise pixels: the per-channel mean and std they subtract and
    #: divide by (explanations draw the image with the normalisation undone). None: none.
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None

    def examples(self) -> list[Any] | None:
        """Made-up raw values this processor reads, as a record would hold them (of different
        sizes where the modality has a size). The conformance kit feeds them to the processor
        and ``mmcore export`` makes its example inputs from the first; text needs none (the
        core makes strings). Default None: the kit's defaults for text, image and audio, and
        ``mmcore export`` asks for a record."""
        return None

    def encode(self, text: str) -> list[int]:
        """Text token processors: the ids of one string, without ``<bos>`` / ``<eos>`` (what a
        packed text corpus, :class:`mmcore.data.PackedTextDataset`, reads)."""
        raise NotImplementedError(f"{type(self).__name__} does not encode text to ids")

    def decode(self, ids: Sequence[int] | Tensor) -> Any:
        """Token processors: ids back to a value (text; an image for image tokens). For a
        generated output (:func:`mmcore.generate_outputs`) ``ids`` are the output's ids after
        ``bos_id``: those the prompt started it with, then the generated ones. A processor
        without ``eos_id`` but with ``max_tokens`` makes fixed-size outputs (``max_tokens`` ids
        with ``bos_id``); generation then fills exactly the ids the prompt lacks."""
        raise NotImplementedError(f"{type(self).__name__} does not decode ids")

    def save_output(self, value: Any, path: Path, *, scale: int = 1) -> None:
        """Processors that declare ``output_suffixes``: write ``value`` (what :meth:`decode`
        returned) to the file ``path``, whose suffix (one of ``output_suffixes``) picks the
        format; the core passes a temporary path and renames it into place (atomic writes).
        ``scale`` > 1 enlarges outputs that have a size (images, by nearest neighbour); a
        processor whose outputs have none raises :class:`mmcore.MMCoreError` for it. Bad
        values raise MMCoreError."""
        raise NotImplementedError(f"{type(self).__name__} writes no outputs (it declares no output_suffixes)")

    def __call__(self, value: Any, *, where: str = "") -> dict[str, Tensor]:
        raise NotImplementedError

    def collate(self, samples: Sequence[dict[str, Tensor] | None]) -> dict[str, Tensor]:
        raise NotImplementedError

    def save(self, directory: str) -> list[str]:
        """Write this processor's files into ``directory``; return their names."""
        return []

    def load(self, directory: str) -> None:
        """Read the files :meth:`save` wrote."""

    # --- helpers for save/load of a JSON description ---------------------------------

    @staticmethod
    def write_json(directory: str, filename: str, kind: str, version: int, data: dict[str, Any]) -> list[str]:
        """Write ``{"kind", "format_version", **data}`` to ``directory/filename``; return ``[filename]``."""
        import json
        import os

        os.makedirs(directory, exist_ok=True)
        body = json.dumps({"kind": kind, "format_version": version, **data}, indent=2) + "\n"
        with open(os.path.join(directory, filename), "w", encoding="utf-8") as f:
            f.write(body)
        return [filename]

    @staticmethod
    def read_json(directory: str, filename: str, kind: str, version: int, what: str) -> dict[str, Any]:
        """Read what :meth:`write_json` wrote, checking kind and version.

        Raises :class:`mmcore.ModelDirError` naming the file when it is missing, unreadable,
        not a JSON object, or of another kind or format version. ``what`` names the
        processor in messages ("the audio processor").
        """
        import json
        import os

        from .errors import ModelDirError
        from .files import open_regular

        path = os.path.join(directory, filename)
        try:
            with open_regular(path) as f:  # a FIFO or a device in a model directory is refused, not read
                data = json.loads(f.read().decode("utf-8"))
        except FileNotFoundError as exc:
            raise ModelDirError(f"{path}: missing; {what} needs it") from exc
        except (OSError, ValueError, RecursionError) as exc:
            raise ModelDirError(f"{path}: unreadable: {type(exc).__name__}: {exc}") from exc
        if not isinstance(data, dict):
            raise ModelDirError(f"{path}: expected a JSON object, got {type(data).__name__}")
        for key, want in (("kind", kind), ("format_version", version)):
            if data.get(key) != want:
                raise ModelDirError(f"{path}: {key} is {data.get(key)!r}, expected {want!r}")
        return data


class Encoder(nn.Module):
    """Turns one modality's collated tensors into a sequence of embeddings.

    Contract:

    * class attribute ``modality`` (``"text"``, ``"image"``...) and instance attribute
      ``out_dim`` (width of the tokens it produces).
    * ``forward(inputs: dict[str, Tensor]) -> Tokens`` where ``inputs`` is what the
      paired Processor's ``collate`` returned (moved to the model's device).
      ``Tokens.embeds`` is (B, N, out_dim), ``Tokens.mask`` (B, N) bool, right-padded;
      samples that lack the modality get all-False mask rows.
    * No Python loop over samples or tokens; deterministic in eval mode.
    * A text encoder that owns a token vocabulary exposes ``token_embedding``
      (an ``nn.Embedding`` an LM head can tie to) and ``vocab_size``.
    * Capabilities the core reads, with their defaults: ``vocab_size`` (None: no token
      vocabulary), ``max_tokens`` (the most tokens for one sample; None: unknown, the
      processor's ``max_length`` is used), ``num_tokens`` (a fixed token count, None if not
      fixed), ``takes_offset`` (generation passes ``offset``, the position of the first new
      token, with step-by-step inputs), ``grid`` (patch encoders: their tokens' grid).
    """

    modality: ClassVar[str] = ""
    out_dim: int
    vocab_size: int | None = None
    max_tokens: int | None = None
    num_tokens: int | None = None
    takes_offset: bool = False
    #: Patch encoders: the (rows, columns) their tokens form in the image (an int: a square
    #: grid); explanations draw per-token weights as a heat map over it. None: no grid.
    grid: int | tuple[int, int] | None = None

    def forward(self, inputs: dict[str, Tensor]) -> Tokens:  # pragma: no cover - abstract
        raise NotImplementedError


class Projector(nn.Module):
    """Maps an encoder's tokens from its width to the backbone's: (B, N, in_dim) -> (B, N, out_dim).

    Applied only to ``Tokens.embeds``; the mask passes through unchanged.
    """

    in_dim: int
    out_dim: int

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class Fusion(nn.Module):
    """Combines every modality's tokens into one sequence for the backbone.

    Contract:

    * ``forward(tokens: Mapping[str, Tokens], batch: Batch) -> FusedSequence``.
      ``tokens`` maps input names to projected :class:`Tokens` of width D (the backbone
      width). The result is right-padded, and ``FusedSequence.index`` tells where every
      modality's tokens went, so heads can find them.
    * ``inserts() -> dict[int, nn.Module]``: layers to run after backbone block *i*
      (cross-attention fusions), called as ``layer(x, context)`` with
      ``FusedSequence.context``. Default: none.
    * ``max_sequence_length(counts)`` and ``embed_step(name, tokens)``: see the methods (the
      core's three fusions implement both, as a plugin's fusion does).
    * A sample whose modality is missing (all-False mask row) is handled through masks.
    """

    def forward(self, tokens: Mapping[str, Tokens], batch: Batch) -> FusedSequence:  # pragma: no cover
        raise NotImplementedError

    def inserts(self) -> dict[int, nn.Module]:
        return {}

    def max_sequence_length(self, counts: Mapping[str, int | None]) -> int | None:
        """The most positions of a fused sequence whose inputs have at most ``counts[name]``
        tokens each (None: that input's count is unknown). The build checks it against the
        backbone's ``context_length``. Default None: the fusion does not say (no check)."""
        return None

    def embed_step(self, name: str, tokens: Tokens) -> Tensor:
        """Embeddings (B, n, D) of new tokens of input ``name`` appended during generation: what
        :meth:`forward` adds to that input's tokens, so a token fed step by step through the KV
        cache gets the embedding it would have had in the fused sequence. Default: unchanged."""
        return tokens.embeds


class Head(nn.Module):
    """Reads the backbone's hidden states and produces a task's outputs and loss.

    Contract:

    * ``forward(hidden: Tensor, sequence: FusedSequence) -> HeadOutput``; ``hidden`` is
      (B, L, D). Use ``sequence.gather(hidden, modality)`` to read one modality's
      positions and ``sequence.mask`` for validity.
    * ``loss(output: HeadOutput, batch: Batch) -> Tensor | None``: a scalar, or None when
      the batch has no targets for this head. Padding never contributes.
    * ``loss_terms(output, batch) -> (total, count) | None``: the loss as a sum over its
      items (tokens, samples) and the number (or total weight) of items, with
      ``loss == total / count``. The trainer uses it to normalise exactly across gradient
      accumulation and processes. The default derives it from ``loss`` with count = B;
      heads whose loss is a mean over a varying number of items override it.
    * ``weight`` (float, default 1.0): the head's share of the model's total loss.
    * ``special_tokens_needed``: as for :class:`Fusion`.
    * LM-style heads (next-token logits over an input's tokens; generation and explanations
      use them) set ``input`` (the encoder input whose tokens they predict) and
      ``vocab_size``, and implement ``project(h)``: hidden states (..., D) -> logits (..., V).
      Other heads leave ``input`` None. Classifiers set ``num_classes``; heads that pool the
      sequence set ``pooling``. The kit checks that ``project`` of the hidden states gives the
      logits ``forward`` returns.
    """

    weight: float = 1.0
    special_tokens_needed: Sequence[str] | Mapping[str, Sequence[str]] = ()
    input: str | None = None
    vocab_size: int | None = None
    num_classes: int | None = None
    #: Heads that pool the sequence: which positions they read (``"last"``, ``"first"`` or
    #: ``"mean"`` of the valid positions); explanations attribute those. None: not pooled.
    pooling: str | None = None

    def project(self, h: Tensor) -> Tensor:
        """LM-style heads: hidden states (..., D) -> logits (..., V)."""
        raise NotImplementedError(f"{type(self).__name__} is not an LM-style head (its input is None)")

    def forward(self, hidden: Tensor, sequence: FusedSequence) -> HeadOutput:  # pragma: no cover
        raise NotImplementedError

    def loss(self, output: HeadOutput, batch: Batch) -> Tensor | None:
        return None

    def loss_terms(self, output: HeadOutput, batch: Batch) -> tuple[Tensor, Tensor] | None:
        loss = self.loss(output, batch)
        if loss is None:
            return None
        n = torch.tensor(float(output.logits.shape[0]), device=loss.device)
        return loss * n, n


class Objective:
    """What a task asks of the model: its targets, its loss and its metrics.

    An objective is a component of kind ``objective``, registered through
    ``mmcore_register_components`` like an encoder or a head; a ``[tasks.<name>]`` section
    names it (``objective = "regression"``) and gives its options (``options = {...}``,
    validated by the component's options model). The registration declares what the spec
    checks before anything is built: the head components it trains (``Component.heads``), its
    attention mode (``Component.attention``), whether it reads the task's text input
    (``Component.text``) and the special tokens that input needs (``Component.special_tokens``).

    Built by the component's factory as ``factory(config, *, task, head, model, where)``:
    ``config`` its validated options, ``task`` the :class:`mmcore.TaskConfig`, ``head`` the
    name of the head it trains (in ``model.heads``), ``model`` the
    :class:`mmcore.MultimodalGPT` (read its heads and processors; keep no reference to it),
    ``where`` the spec path for messages (``"tasks.fit"``). The trainer, ``mmcore eval`` and
    the CLI use nothing but the methods below, for the first-party objectives (``lm``,
    ``mlm``, ``prefix_lm``, ``classification``, registered by the core as a plugin) as for a
    plugin's.

    Contract:

    * ``name``, ``head``: its registered name and the head it trains; ``attention``: the mode
      the backbone runs in for it (None: the backbone's configured mode).
    * ``targets() -> list[TargetField]``: the record fields it reads as targets and their JSON
      types. The data layer validates each record against them (a bad value is a bad record
      naming file, line and field) and collates them into ``batch.targets``
      (see :class:`mmcore.TargetField`). Must be cheap and picklable.
    * ``setup(model, targets)``: called once by the trainer before the first step of a fresh
      run, with an iterable of every training record's parsed targets (dicts name -> value;
      records without them are left out). Learn what the task needs from the training set
      here (a regression head's target standardisation, kept in the head's buffers so it is
      saved with the model). Default: nothing.
    * ``prepare(batch, generator) -> Batch``: transform a batch before the forward pass
      (masked LM corrupts the text here), drawing randomness from ``generator``. Default: the
      batch unchanged.
    * ``terms(model, batch) -> (total, count, output)``: run the model and return the loss as
      a sum over its items (tokens, samples) and their number (or total weight), with the
      task's loss ``== total / count``, plus the :class:`mmcore.ModelOutput`. The trainer
      adds the totals and counts of every micro-batch and process before dividing, so the
      step's loss is the exact mean over all items. ``model`` may be wrapped (DDP): run it,
      and read its heads through :meth:`unwrap`. Default: the forward pass with
      ``mode=self.attention, heads=[self.head]`` and the head's ``loss_terms``.
    * ``metric_state(output, batch) -> dict[str, Tensor]``: this batch's contribution to the
      metrics, as tensors that *add up*: the evaluator sums them over every batch of an
      evaluation set and over processes (``all_reduce``), so a metric is never a mean of
      batch means. Default: none.
    * ``metrics(state) -> dict[str, float]``: the metrics from the summed state, which also
      holds ``"loss_total"`` and ``"loss_count"`` (the summed :meth:`terms`). Default:
      ``{"loss": loss_total / loss_count}``.
    * ``distillation``: ``"token"`` (next-token logits (B, N, V) over an input's tokens),
      ``"sample"`` (logits (B, C) per sample) or None (cannot be distilled); a task with a
      ``teacher`` wraps the objective in the core's distillation, which reads it.
    * ``parameters()``, ``state_dict()``, ``load_state_dict(state)``: trainable state the
      objective holds outside the model (kept in the trainer's checkpoints). Default: none.
    """

    name: str = ""
    head: str = ""
    attention: str | None = None
    distillation: str | None = None
    generates: bool = False

    def targets(self) -> list[TargetField]:
        return []

    def setup(self, model: nn.Module, targets: Iterable[Mapping[str, Any]]) -> None:
        """Learn from the training set's targets before training (default: nothing)."""

    def prepare(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        return batch

    def terms(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor, ModelOutput]:
        out = model(batch, mode=self.attention, heads=[self.head], compute_loss=False)
        terms = self.unwrap(model).heads[self.head].loss_terms(out.outputs[self.head], batch)
        if terms is None:
            from .errors import MMCoreError

            raise MMCoreError(
                f"{self.name} objective: head {self.head!r} found no targets in the batch "
                f"(inputs {sorted(batch.inputs)}, targets {sorted(batch.targets)})"
            )
        total, count = terms
        return total, count.to(total.dtype), out

    def metric_state(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        return {}

    def metrics(self, state: Mapping[str, Tensor]) -> dict[str, float]:
        return {"loss": float(state["loss_total"]) / max(float(state["loss_count"]), 1e-12)}

    def parameters(self) -> list[nn.Parameter]:
        return []

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state:
            from .errors import MMCoreError

            raise MMCoreError(f"{self.name} objective has no state; got {sorted(state)}")

    @staticmethod
    def unwrap(model: nn.Module) -> nn.Module:
        """The model inside a DDP wrapper (``module``), else the model itself."""
        inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
        return inner


@runtime_checkable
class ResetsBuffers(Protocol):
    """A module with non-persistent buffers (not in its state dict) recomputes them here.

    :func:`mmcore.load` builds a model on the meta device and loads its weights with
    ``assign=True``; buffers that are not saved are then still on the meta device, and the
    nearest module (itself or an ancestor) that implements ``reset_buffers()`` is called to
    fill them. Any component (or a module inside one) may implement it."""

    def reset_buffers(self) -> None: ...


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU when it has none)."""
    for t in module.parameters():
        return t.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")
