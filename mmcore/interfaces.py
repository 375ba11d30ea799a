"""The contracts a plugin implements: Processor, Encoder, Fusion, Head, Projector.

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

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .registry import call_factory
from .types import Batch, FusedSequence, HeadOutput, Tokens

__all__ = ["Processor", "Encoder", "Fusion", "Head", "Projector", "call_factory"]


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
    """

    modality: ClassVar[str] = ""
    out_dim: int

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
    * A sample whose modality is missing (all-False mask row) is handled through masks.
    """

    def forward(self, tokens: Mapping[str, Tokens], batch: Batch) -> FusedSequence:  # pragma: no cover
        raise NotImplementedError

    def inserts(self) -> dict[int, nn.Module]:
        return {}


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
    """

    weight: float = 1.0

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


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU when it has none)."""
    for t in module.parameters():
        return t.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")
