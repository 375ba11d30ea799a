"""The head harness: stub encoders, the core's early fusion, random hidden states."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..config import BackboneConfig
from ..types import Batch, FusedSequence, HeadOutput, Tokens
from .common import BACKBONE, WIDTH, _Fail, _same, _Target
from .harness import _Harness, _Stack, _stubs


class _HeadHarness(_Harness):
    VOCAB = 40
    #: per sample: (image tokens, text tokens); None: the record lacks that input
    LAYOUT = ((3, 5), (None, 3), (3, 8), (3, None))

    def __init__(self, target: _Target, workdir: str, targets: Callable[[Batch], dict[str, Tensor]] | None):
        super().__init__(target, workdir)
        from ..builtin import EarlyFusionConfig
        from ..fusion import EarlyFusion

        self.targets = targets
        self.backbone_config = BackboneConfig(**BACKBONE)
        self.inputs = {"image": "image", "text": "text"}
        self.fusion = EarlyFusion(EarlyFusionConfig(modality_embeddings=False), WIDTH, ["image", "text"], {"text"})
        gen = torch.Generator().manual_seed(3)
        self.ids = [None if t is None else torch.randint(0, self.VOCAB, (t,), generator=gen) for _, t in self.LAYOUT]
        self.hidden_seed = 300

    def build(self, seed: int, device: str | None = None) -> nn.Module:
        encoders = _stubs(self.inputs, self.VOCAB)  # the same values for every build; moved with the head
        head = self._factory_call(seed, device, width=WIDTH, encoders=dict(encoders), backbone=self.backbone_config)
        return _Stack(head, encoders=nn.ModuleDict(encoders))

    def state_module(self, module: nn.Module) -> nn.Module:
        return cast(nn.Module, module.component)

    def component(self, module: nn.Module) -> nn.Module:
        return cast(nn.Module, module.component)

    def make(
        self,
        picks: Sequence[Any],
        *,
        noise: int = 1,
        dtype: torch.dtype = torch.float32,
        exclude: Sequence[str] = (),
    ) -> Any:
        B = len(picks)
        tokens: dict[str, Tokens] = {}
        inputs: dict[str, dict[str, Tensor]] = {}
        img = [self.LAYOUT[p][0] for p in picks]
        if any(n is not None for n in img) and "image" not in exclude:
            n = max(k for k in img if k is not None)
            mask = torch.tensor([[j < (k or 0) for j in range(n)] for k in img], dtype=torch.bool)
            tokens["image"] = Tokens(torch.zeros(B, n, WIDTH), mask)
            inputs["image"] = {"present": mask.any(1)}
        txt = [self.ids[p] for p in picks]
        if any(t is not None for t in txt) and "text" not in exclude:
            n = max(len(t) for t in txt if t is not None)
            ids = torch.zeros(B, n, dtype=torch.long)
            mask = torch.zeros(B, n, dtype=torch.bool)
            for i, t in enumerate(txt):
                if t is not None:
                    ids[i, : len(t)] = t
                    mask[i, : len(t)] = True
            tokens["text"] = Tokens(torch.zeros(B, n, WIDTH), mask)
            inputs["text"] = {"ids": ids, "mask": mask}
        labels = torch.tensor([p % 2 for p in picks], dtype=torch.long)
        batch = Batch(inputs, {"label": labels})
        with torch.no_grad():
            seq = self.fusion(tokens, batch)
        gen = torch.Generator().manual_seed(self.hidden_seed + noise)
        hidden = torch.randn(B, seq.mask.shape[1], WIDTH, generator=gen) * 10
        for i, p in enumerate(picks):
            real = seq.mask[i].nonzero().squeeze(1)
            g = torch.Generator().manual_seed(1000 + p)
            hidden[i, real] = torch.randn(len(real), WIDTH, generator=g)
        seq = FusedSequence(
            embeds=hidden,
            mask=seq.mask,
            modality_ids=seq.modality_ids,
            modalities=seq.modalities,
            index=seq.index,
            positions=seq.positions,
            prefix_len=seq.prefix_len,
        )
        return hidden.to(dtype), seq, batch

    def call(self, component: Any, batch: Any) -> Any:
        return component(batch[0], batch[1])

    def rows(self, out: HeadOutput, batch: Any) -> list[Tensor | None]:
        logits, mask = out.logits, out.mask
        B = logits.shape[0]
        if mask is not None and logits.dim() >= 2 and tuple(mask.shape) == tuple(logits.shape[:2]):
            return [logits[i][mask[i]] for i in range(B)]
        return [logits[i] for i in range(B)]

    def primary(self, out: HeadOutput) -> list[Tensor]:
        return [out.logits] + ([out.mask] if out.mask is not None else [])

    def _with_targets(self, module: nn.Module, batch: Batch) -> Batch:
        head = module.component
        if self.targets is not None:
            return Batch(batch.inputs, dict(self.targets(batch)))
        own = getattr(head, "example_targets", None)
        if callable(own):
            return Batch(batch.inputs, dict(own(batch)))
        return batch

    def loss_of(self, module: nn.Module, out: HeadOutput, batch: Any) -> tuple[Tensor | None, Any]:
        head = module.component
        b = self._with_targets(module, batch[2])
        b = Batch(b.inputs, {k: v.to(out.logits.device) for k, v in b.targets.items()})
        return head.loss(out, b), head.loss_terms(out, b)

    def extra_loss(self, module: nn.Module, out: Any, batch: Any) -> Tensor | None:
        return self.loss_of(module, out, batch)[0]

    def validate(self, module: nn.Module, out: Any, batch: Any, picks: Sequence[Any]) -> None:
        B = len(picks)
        if not isinstance(out, HeadOutput):
            raise _Fail(f"forward must return mmcore.HeadOutput, got {type(out).__name__}")
        lg = out.logits
        if not isinstance(lg, Tensor) or not lg.is_floating_point() or lg.dim() < 2 or lg.shape[0] != B:
            got = tuple(lg.shape) if isinstance(lg, Tensor) else type(lg).__name__
            raise _Fail(f"HeadOutput.logits must be a floating tensor with the batch first ({B}, ...), got {got}")
        if not bool(torch.isfinite(lg).all()):
            raise _Fail("HeadOutput.logits holds NaN or infinity")
        if out.mask is not None:
            m = out.mask
            if not isinstance(m, Tensor) or m.dtype != torch.bool or tuple(m.shape) != tuple(lg.shape[:2]):
                raise _Fail(
                    f"HeadOutput.mask must be None or a bool tensor of shape logits.shape[:2] = {tuple(lg.shape[:2])}, "
                    f"got {getattr(m, 'dtype', type(m).__name__)} {tuple(getattr(m, 'shape', ()))}"
                )
        loss, terms = self.loss_of(module, out, batch)
        if loss is None:
            if terms is not None:
                raise _Fail("loss() is None but loss_terms() is not")
            return
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            raise _Fail(f"loss() must return a scalar tensor or None, got {getattr(loss, 'shape', loss)}")
        if not bool(torch.isfinite(loss)):
            raise _Fail(f"loss() is {float(loss)} for a batch with padding and missing inputs")
        if terms is None or len(terms) != 2:
            raise _Fail("loss_terms() must return (total, count) when loss() is not None")
        total, count = terms
        if float(count) > 0:
            _same(
                (total / count).reshape(()),
                loss.reshape(()),
                "loss_terms() must satisfy total / count == loss()",
                tol=1e-3 * (1 + abs(float(loss))),
            )

    def check_padding_extra(self, module: nn.Module) -> None:
        module.eval()
        every = self.everything()
        losses = []
        for noise in (1, 2):
            batch = self.make(every, noise=noise)
            with torch.no_grad():
                losses.append(self.loss_of(module, self.run(module, batch), batch)[0])
        if losses[0] is not None:
            _same(
                losses[0].reshape(()),
                losses[1].reshape(()),
                "the loss changes when only the hidden states at padding positions change: padding contributes",
            )

    def check_missing(self, module: nn.Module) -> None:
        module.eval()
        with torch.no_grad():
            for picks, exclude, what in (
                ([1, 3], (), "a batch with a record lacking the image and one lacking the text"),
                ([0, 1], ("image",), "a batch without any image"),
                ([0, 3], ("text",), "a batch without any text"),
            ):
                batch = self.make(picks, exclude=exclude)
                try:
                    out = self.run(module, batch)
                    self.validate(module, out, batch, picks)
                except _Fail as exc:
                    raise _Fail(f"{what}: {exc}") from None

    def bad_inputs(self, module: nn.Module) -> list[tuple[str, Callable[[], Any]]]:
        module.eval()
        hidden, seq, _ = self.make([0, 2])
        wide = torch.randn(hidden.shape[0], hidden.shape[1], WIDTH + 3)
        return [
            (f"hidden states of width {WIDTH + 3} for a head built for {WIDTH}", lambda: module.component(wide, seq))
        ]
