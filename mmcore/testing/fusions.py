"""The fusion harness: stub encoders, the core's backbone, random tokens with padding and
missing rows."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..config import BackboneConfig
from ..types import Batch, FusedSequence, Tokens
from .common import BACKBONE, WIDTH, _Fail, _same, _Target
from .harness import _check_mask, _Harness, _Stack, _stubs


class _FusionHarness(_Harness):
    #: per sample: tokens per input (None: the record lacks it)
    LAYOUT = (
        {"image": 4, "audio": 3, "text": 5},
        {"image": 4, "audio": None, "text": 2},
        {"image": None, "audio": 6, "text": 7},
        {"image": 4, "audio": 2, "text": 3},
    )

    def __init__(self, target: _Target, workdir: str, inputs: Mapping[str, str] | None):
        super().__init__(target, workdir)
        self.inputs = dict(inputs or {"image": "image", "audio": "audio", "text": "text"})
        if sum(m == "text" for m in self.inputs.values()) != 1:
            raise ValueError(f"inputs must hold exactly one text input, got {self.inputs}")
        others = [n for n, m in self.inputs.items() if m != "text"]
        column = {n: ("image", "audio")[j % 2] for j, n in enumerate(others)}  # layouts to reuse for other names
        column.update({n: "text" for n, m in self.inputs.items() if m == "text"})
        self.layout = [{n: row[column[n]] for n in self.inputs} for row in self.LAYOUT]
        self.backbone_config = BackboneConfig(**BACKBONE)
        self.encoders = _stubs(self.inputs, 50)
        gen = torch.Generator().manual_seed(2)
        self.tokens = [
            {n: None if k is None else torch.randn(k, WIDTH, generator=gen) for n, k in row.items()}
            for row in self.layout
        ]

    def build(self, seed: int, device: str | None = None) -> nn.Module:
        from ..backbone import GPT

        fusion = self._factory_call(
            seed, device, width=WIDTH, encoders=dict(self.encoders), backbone=self.backbone_config
        )
        inserts = fusion.inserts() if hasattr(fusion, "inserts") else {}
        with torch.device(device) if device else contextlib.nullcontext():
            torch.manual_seed(seed + 7)
            backbone = GPT(self.backbone_config, inserts=inserts or None)
        return _Stack(fusion, backbone=backbone)

    def make(
        self,
        picks: Sequence[Any],
        *,
        noise: int = 1,
        dtype: torch.dtype = torch.float32,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
    ) -> Any:
        gen = torch.Generator().manual_seed(200 + noise)
        tokens: dict[str, Tokens] = {}
        inputs: dict[str, dict[str, Tensor]] = {}
        for name in self.inputs:
            have = [self.tokens[p][name] for p in picks]
            if name in exclude or (all(t is None for t in have) and name not in include):
                continue  # like a batch where no record has the input
            n = max([1, *(len(t) for t in have if t is not None)])
            x = torch.randn(len(picks), n, WIDTH, generator=gen) * 10
            mask = torch.zeros(len(picks), n, dtype=torch.bool)
            for i, t in enumerate(have):
                if t is not None:
                    x[i, : len(t)] = t
                    mask[i, : len(t)] = True
            tokens[name] = Tokens(x.to(dtype), mask)
            inputs[name] = {"mask": mask}
            if self.inputs[name] == "text":
                inputs[name]["ids"] = torch.randint(0, 50, (len(picks), n), generator=gen)
        return tokens, Batch(inputs)

    def component(self, module: nn.Module) -> nn.Module:
        return cast(nn.Module, module.component)

    def call(self, component: Any, batch: Any) -> Any:
        return component(batch[0], batch[1])

    def run(self, module: nn.Module, batch: Any) -> Any:
        seq = module.component(batch[0], batch[1])
        hidden = module.backbone.run_sequence(seq)
        return seq, hidden

    def rows(self, out: Any, batch: Any) -> list[Tensor | None]:
        seq, hidden = out
        return [torch.cat([seq.embeds[i][seq.mask[i]], hidden[i][seq.mask[i]]], -1) for i in range(hidden.shape[0])]

    def primary(self, out: Any) -> list[Tensor]:
        seq = out[0] if isinstance(out, tuple) else out
        return [seq.embeds, seq.mask, seq.modality_ids]

    def trainable(self, module: nn.Module) -> list[tuple[str, nn.Parameter]]:
        fusion = module.component
        out = [(n, p) for n, p in fusion.named_parameters() if p.requires_grad]
        seen = {id(p) for _, p in out}
        inserts = fusion.inserts() if hasattr(fusion, "inserts") else {}
        for i, layer in sorted(inserts.items()):
            for n, p in layer.named_parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    out.append((f"inserts.{i}.{n}", p))
        return out

    def validate(self, module: nn.Module, out: Any, batch: Any, picks: Sequence[Any]) -> None:
        seq = out[0] if isinstance(out, tuple) else out
        tokens = batch[0]
        B = len(picks)
        if not isinstance(seq, FusedSequence):
            raise _Fail(f"forward must return mmcore.FusedSequence, got {type(seq).__name__}")
        e = seq.embeds
        if not isinstance(e, Tensor) or e.dim() != 3 or e.shape[0] != B or e.shape[2] != WIDTH:
            got = tuple(e.shape) if isinstance(e, Tensor) else type(e).__name__
            raise _Fail(f"FusedSequence.embeds must be (B, L, D) = ({B}, L, {WIDTH}), got {got}")
        L = e.shape[1]
        if not bool(torch.isfinite(e).all()):
            raise _Fail("FusedSequence.embeds holds NaN or infinity")
        _check_mask(seq.mask, (B, L), "FusedSequence.mask")
        ids = seq.modality_ids
        if not isinstance(ids, Tensor) or tuple(ids.shape) != (B, L) or ids.dtype != torch.long:
            raise _Fail(f"FusedSequence.modality_ids must be (B, L) long, got {getattr(ids, 'shape', ids)}")
        if bool((ids[~seq.mask] != -1).any()):
            raise _Fail("FusedSequence.modality_ids must be -1 at padding positions")
        n_mod = len(seq.modalities)
        if bool(((ids[seq.mask] < 0) | (ids[seq.mask] >= n_mod)).any()):
            raise _Fail(f"FusedSequence.modality_ids at real positions must index modalities ({n_mod} of them)")
        unknown = set(seq.modalities) - set(self.inputs)
        if unknown:
            raise _Fail(f"FusedSequence.modalities names unknown inputs {sorted(unknown)}")
        if seq.padding_side != "right":
            raise _Fail(f"a fusion's sequence must be right-padded, got padding_side={seq.padding_side!r}")
        for name, idx in seq.index.items():
            if name not in tokens:
                raise _Fail(f"FusedSequence.index has input {name!r}, which is not in the batch")
            if idx is None:
                continue
            if not isinstance(idx, Tensor) or idx.dim() != 2 or idx.shape[0] != B or idx.dtype != torch.long:
                raise _Fail(
                    f"FusedSequence.index[{name!r}] must be (B, N) long or None, got {getattr(idx, 'shape', idx)}"
                )
            real = idx >= 0
            if bool((idx[real] >= L).any()):
                raise _Fail(f"FusedSequence.index[{name!r}] points past the sequence (L = {L})")
            rows = torch.arange(B).unsqueeze(1).expand_as(idx)
            if bool((~seq.mask[rows[real], idx[real]]).any()):
                raise _Fail(f"FusedSequence.index[{name!r}] points at padding positions")
            if bool((idx[~real] != -1).any()):
                raise _Fail(f"FusedSequence.index[{name!r}] must be -1 where the token is padding")
        p = seq.prefix_len
        if p is not None:
            if not isinstance(p, Tensor) or tuple(p.shape) != (B,):
                raise _Fail(f"FusedSequence.prefix_len must be (B,) or None, got {getattr(p, 'shape', p)}")
            if bool(((p < 0) | (p > seq.mask.sum(1))).any()):
                raise _Fail("FusedSequence.prefix_len must lie between 0 and each sample's real length")
        for i, pick in enumerate(picks):
            if any(t is not None for t in self.tokens[pick].values()) and not bool(seq.mask[i].any()):
                raise _Fail(f"sample {i} has inputs but no real position in the fused sequence")

    def check_missing(self, module: nn.Module) -> None:
        module.eval()
        names = [n for n in self.inputs if self.inputs[n] != "text"]
        for pick in self.everything():
            lacking = [n for n in names if self.tokens[pick][n] is None]
            if not lacking:
                continue
            with torch.no_grad():
                present = self.make([pick], include=lacking)
                absent = self.make([pick])
                a = self.rows(self.run(module, present), present)[0]
                b = self.rows(self.run(module, absent), absent)[0]
            _same(
                a,
                b,
                f"a sample without {lacking[0]!r} gives other outputs when that input is in the batch with an "
                "all-False mask row than when it is absent: missing inputs must be handled through the mask",
            )
        with torch.no_grad():  # a batch where only the text is present
            only_text = self.make([0, 1], exclude=names)
            out = self.run(module, only_text)
            self.validate(module, out, only_text, [0, 1])

    def bad_inputs(self, module: nn.Module) -> list[tuple[str, Callable[[], Any]]]:
        module.eval()
        _, batch = self.make([0])
        return [("forward with no tokens at all", lambda: module.component({}, batch))]
