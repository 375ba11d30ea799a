"""``encoder:vision.timm``: any timm model as an image encoder.

The model is ``timm.create_model(model, pretrained=False, num_classes=0,
in_chans=channels, **model_args)`` -- nothing is ever downloaded; ``weights`` may name a
local ``.safetensors`` file (never a pickle). Its features become tokens
(B = batch, S = image_size, D = out_dim)::

    pixels (B, C, S, S) -> forward_features (features = "last")
                           or forward_intermediates(indices=[i]) (features = i)
      CNN feature map (B, D, h, w)  --rearrange--> (B, h*w, D)
      NHWC feature map (B, h, w, D) --rearrange--> (B, h*w, D)      (e.g. Swin)
      ViT sequence (B, P + n, D)    --> itself, or (B, n, D) without the P prefix
                                        (class/register) tokens when drop_prefix_tokens

timm is imported here, when a model is built, never by the plugin module.
"""

from __future__ import annotations

import difflib
import functools
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from mmcore import Encoder, SpecError, SpecIssue, Tokens, WeightsError, regular_file_problem

from .config import IMAGENET_MEAN, IMAGENET_STD, TimmEncoderConfig
from .patch import check_pixels
from .processor import ImageProcessor, to_channels

__all__ = ["TimmEncoder", "timm_processor", "resolve_image_options", "check_model_name"]

_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


def _timm() -> Any:
    import timm

    return timm


def _issue(option: str, message: str, hint: str | None = None) -> SpecError:
    return SpecError([SpecIssue(option, message, hint=hint)])


def check_model_name(name: str) -> str:
    """``name`` if timm knows it, else a :class:`~mmcore.SpecError` listing close matches."""
    timm = _timm()
    if ":" in name:
        raise _issue(
            "model",
            f"{name!r}: only timm's built-in architectures are accepted (hub and local-dir names would fetch "
            "weights or code); use e.g. 'resnet18' and give local weights with `weights`",
        )
    if timm.is_model(name):
        return name
    arch = name.split(".")[0]
    matches = timm.list_models(f"*{arch}*") if arch else []
    if not matches:
        matches = difflib.get_close_matches(arch, timm.list_models(), n=8, cutoff=0.6)
    shown = ", ".join(matches[:12]) + (f" ... ({len(matches)} in all)" if len(matches) > 12 else "")
    hint = f"close matches: {shown}" if matches else "no close match; list them with timm.list_models('*pattern*')"
    raise _issue("model", f"unknown timm model {name!r}", hint)


def _pretrained_cfg(name: str) -> dict[str, Any]:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name, allow_unregistered=True)
    if cfg is None:
        return {}
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(vars(cfg))


def resolve_image_options(config: TimmEncoderConfig) -> dict[str, Any]:
    """What the options leave unset, from the model: image_size, mean, std, interpolation.

    ``image_size``: the option, else ``model_args.img_size``, else the pretrained_cfg input
    size; mean/std/interpolation: the model's pretrained_cfg (ImageNet/bicubic without one).
    """
    name = check_model_name(config.model)
    cfg = _pretrained_cfg(name)
    size = config.image_size
    if size is None:
        arg = config.model_args.get("img_size")
        if isinstance(arg, int) and not isinstance(arg, bool):
            size = arg
        else:
            size = int(tuple(cfg.get("input_size") or (3, 224, 224))[-1])
    interpolation = cfg.get("interpolation")
    return {
        "image_size": int(size),
        "mean": to_channels(cfg.get("mean") or IMAGENET_MEAN, config.channels),
        "std": to_channels(cfg.get("std") or IMAGENET_STD, config.channels),
        "interpolation": interpolation if interpolation in _INTERPOLATIONS else "bicubic",
    }


def timm_processor(config: TimmEncoderConfig | Mapping[str, Any]) -> ImageProcessor:
    """The :class:`ImageProcessor` of ``vision.timm``: options unset in ``config`` come from the model."""
    if not isinstance(config, TimmEncoderConfig):
        config = TimmEncoderConfig.model_validate(dict(config))
    return ImageProcessor(config, **resolve_image_options(config))


class TimmEncoder(Encoder):
    """A timm model's features as tokens.

    Built as ``TimmEncoder(config, *, width, processor)`` (``width`` is ignored: ``out_dim``
    is the model's feature width and the model adds a projector when it differs from the
    backbone's; ``processor`` must produce this encoder's input size).

    ``forward({"pixels": (B, C, S, S) float, "present": (B,) bool})`` ->
    ``Tokens(embeds=(B, N, out_dim), mask=(B, N) bool)``; N is fixed by the model and S
    (``num_tokens``). Only the images that are present go through the model (so fake
    zero images never touch batch-norm statistics); missing ones get zero embeddings
    and all-False mask rows. No loop over samples.

    Attributes:
        model: the timm model (its own parameter names: weight files for ``weights`` use
            them; in a full model they are ``encoders.<input>.model.<name>``).
        out_dim: ``model.num_features`` (or the chosen stage's width with ``features = i``).
        num_tokens: N, when known (found at build time by a shape-only pass on the meta
            device; else at the first batch).
    """

    modality = "image"

    def __init__(self, config: TimmEncoderConfig, *, width: int | None = None, processor: Any = None):
        super().__init__()
        timm = _timm()
        self.config = config
        name = check_model_name(config.model)
        resolved = resolve_image_options(config)
        self.image_size = int(resolved["image_size"])
        if processor is not None:
            want = (config.channels, self.image_size, self.image_size)
            got = tuple(getattr(processor, "output_shape", want))
            if got != want:
                raise ValueError(f"vision.timm: the processor produces images of shape {got}, the encoder reads {want}")
        self.channels = config.channels
        args = dict(config.model_args)
        try:
            model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=config.channels, **args)
        except TypeError as exc:
            raise _issue("model_args", f"timm model {name!r} does not accept these arguments {args}: {exc}") from None
        except Exception as exc:
            where = "model_args" if args else "model"
            raise _issue(where, f"timm could not build {name!r} with {args}: {type(exc).__name__}: {exc}") from None
        self.model = model
        self.model_name = name
        self._check_input_size()
        if config.weights is not None and not any(p.is_meta for p in model.parameters()):
            self.load_weights(config.weights)  # on the meta device the model directory's weights are assigned
        self.feature_index: int | None = None
        out_dim = int(model.num_features)
        if config.features != "last":
            self.feature_index, out_dim = self._prune_to(config.features)
        self.out_dim = out_dim
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)
        self.drop_prefix_tokens = bool(config.drop_prefix_tokens) and self.feature_index is None
        fmt = str(getattr(model, "output_fmt", "NCHW")) if self.feature_index is None else "NCHW"
        self.layout = "NHWC" if fmt.upper().endswith("NHWC") else "NCHW"
        self.num_tokens: int | None = self._probe()
        _install_buffer_resets(model, name, args, config.channels)

    # --- build-time checks ---------------------------------------------------------------

    def _check_input_size(self) -> None:
        s, name, model = self.image_size, self.model_name, self.model
        cfg = _pretrained_cfg(name)
        pe = getattr(model, "patch_embed", None)
        img = getattr(pe, "img_size", None)
        if pe is not None and img is not None:
            ph, pw = _pair(getattr(pe, "patch_size", (1, 1)))
            dynamic = bool(getattr(model, "dynamic_img_size", False) or getattr(pe, "dynamic_img_size", False))
            pad = bool(getattr(pe, "dynamic_img_pad", False))
            # A position embedding (or a strict patch embedding) fixes the size; otherwise the probe decides.
            fixed = bool(getattr(pe, "strict_img_size", False)) or getattr(model, "pos_embed", None) is not None
            if dynamic:
                if not pad and s % ph:
                    raise _issue(
                        "image_size",
                        f"{name} cuts the image into {ph}x{pw} patches: image_size ({s}) must be a multiple of {ph}",
                    )
            elif fixed and tuple(_pair(img)) != (s, s):
                h, w = _pair(img)
                raise _issue(
                    "image_size",
                    f"{name} is built for {h}x{w} input ({ph}x{pw} patches laid out for that size); "
                    f"image_size = {s} does not fit",
                    f"set image_size = {h}, or build it for {s} with model_args = {{img_size = {s}}} "
                    f"(a multiple of the patch size {ph})",
                )
        elif cfg.get("fixed_input_size") and "img_size" not in self.config.model_args:
            h, w = tuple(cfg.get("input_size", (3, s, s)))[-2:]
            if (h, w) != (s, s):
                raise _issue(
                    "image_size",
                    f"{name} takes a fixed input size of {h}x{w} (timm pretrained_cfg fixed_input_size); "
                    f"image_size = {s} does not fit",
                    f"set image_size = {h}, or leave it unset",
                )
        info = getattr(model, "feature_info", None)
        if info:
            reduction = int(info[-1].get("reduction", 1))
            if s < reduction:
                raise _issue(
                    "image_size",
                    f"{name} downsamples by {reduction}: image_size ({s}) must be at least {reduction}",
                    f"multiples of {reduction} give whole feature maps; its pretrained input size is "
                    f"{tuple(cfg.get('input_size', ('?',)))[-1]}",
                )

    def _prune_to(self, index: int) -> tuple[int, int]:
        model, name = self.model, self.model_name
        info = getattr(model, "feature_info", None)
        if not (hasattr(model, "forward_intermediates") and hasattr(model, "prune_intermediate_layers") and info):
            raise _issue("features", f"{name} has no forward_intermediates in this timm version: use features = 'last'")
        n = len(info)
        if not -n <= index < n:
            raise _issue(
                "features",
                f"{name} has {n} feature stages: features must be 'last' or an index in {-n}..{n - 1}, got {index}",
                "stages: " + ", ".join(f"{i}: {d.get('module')} ({d.get('num_chs')} ch)" for i, d in enumerate(info)),
            )
        index %= n
        out_dim = int(info[index]["num_chs"])
        model.prune_intermediate_layers(indices=[index], prune_norm=True, prune_head=True)
        return index, out_dim

    def _probe(self) -> int | None:
        """N by a shape-only pass on the meta device (no memory, no compute); None if it cannot run there."""
        params = {f"model.{k}": torch.empty_like(v, device="meta") for k, v in self.model.named_parameters()}
        params.update({f"model.{k}": torch.empty_like(v, device="meta") for k, v in self.model.named_buffers()})
        x = torch.empty(1, self.channels, self.image_size, self.image_size, device="meta")
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                y = torch.func.functional_call(_Features(self), params, (x,), strict=True, tie_weights=False)
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, NotImplementedError) or "meta" in text.lower():
                return None  # an op without a meta kernel: learn N from the first batch instead
            raise _issue(
                "image_size",
                f"{self.model_name} cannot take {self.image_size}x{self.image_size} input: {text}",
                f"its pretrained input size is {tuple(_pretrained_cfg(self.model_name).get('input_size', ('?',)))[-1]}",
            ) from None
        finally:
            self.model.train(was)
        return self._learn_shape(y)

    def _learn_shape(self, raw: Tensor) -> int:
        """Check the raw feature shape against out_dim (fixing the layout if needed); return N."""
        if raw.dim() == 4 and raw.shape[1] != self.out_dim and raw.shape[-1] == self.out_dim:
            self.layout = "NHWC"
        elif raw.dim() == 4 and raw.shape[1] == self.out_dim and raw.shape[-1] != self.out_dim:
            self.layout = "NCHW"
        tokens = self._to_tokens(raw)
        if tokens.shape[-1] != self.out_dim:
            raise ValueError(
                f"vision.timm: {self.model_name} produced features of shape {tuple(raw.shape)}, expected width "
                f"{self.out_dim} (model.num_features)"
            )
        return int(tokens.shape[1])

    # --- weights ---------------------------------------------------------------------------

    def load_weights(self, path: str | Path) -> None:
        """Load a ``.safetensors`` state dict of the timm model (its own key names) into ``model``.

        Classifier weights (pretrained_cfg ``classifier``) are ignored: the encoder has
        none. Anything else missing, unexpected or mis-shaped raises
        :class:`~mmcore.WeightsError` listing the keys.
        """
        p = Path(path)
        if p.suffix.lower() != ".safetensors":
            raise WeightsError(
                f"{p}: only .safetensors weights are accepted (.pth/.bin/.pt files are pickles, which can run code "
                "when loaded); convert it with safetensors.torch.save_file"
            )
        problem = regular_file_problem(p)  # a folder or /dev/zero is named as such, and never read
        if problem is not None:
            raise WeightsError(f"{p}: {problem} (weights for timm model {self.model_name!r})")
        from safetensors.torch import load_file

        try:
            state = load_file(str(p), device="cpu")
        except Exception as exc:
            raise WeightsError(f"{p}: not a readable safetensors file: {type(exc).__name__}: {exc}") from None
        heads = _pretrained_cfg(self.model_name).get("classifier") or ()
        heads = (heads,) if isinstance(heads, str) else tuple(heads)
        state = {k: v for k, v in state.items() if not any(k == h or k.startswith(h + ".") for h in heads)}
        filter_fn = getattr(sys.modules.get(type(self.model).__module__), "checkpoint_filter_fn", None)
        if filter_fn is not None:  # timm's own adapter, e.g. resamples a ViT position embedding
            try:
                state = filter_fn(state, self.model)
            except Exception:
                pass
        from mmcore import check_state_dict

        check_state_dict(self.model.state_dict(), state, source=f"{p} (weights for timm model {self.model_name!r})")
        self.model.load_state_dict(state, strict=True)

    # --- forward -----------------------------------------------------------------------------

    def features(self, pixels: Tensor) -> Tensor:
        """Raw features of the chosen stage: (B, C, S, S) -> a feature map or a token sequence."""
        if self.feature_index is None:
            return self.model.forward_features(pixels)
        return self.model.forward_intermediates(pixels, indices=[self.feature_index], intermediates_only=True)[0]

    def _to_tokens(self, y: Tensor) -> Tensor:
        if y.dim() == 4:
            pattern = "b h w c -> b (h w) c" if self.layout == "NHWC" else "b c h w -> b (h w) c"
            return rearrange(y, pattern)
        if y.dim() == 3:
            return y[:, self.num_prefix_tokens :] if self.drop_prefix_tokens else y
        if y.dim() == 2:
            return y.unsqueeze(1)
        raise ValueError(f"vision.timm: {self.model_name} produced features of shape {tuple(y.shape)}")

    def _count_tokens(self, like: Tensor) -> int:
        """N for a batch with no image at all, when the meta pass could not tell: one real no-grad pass."""
        if self.num_tokens is None:
            was = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    self.num_tokens = self._learn_shape(self.features(torch.zeros_like(like[:1])))
            finally:
                self.model.train(was)
        return self.num_tokens

    def forward(self, inputs: dict[str, Tensor]) -> Tokens:
        size = (self.image_size, self.image_size)
        pixels = check_pixels(inputs.get("pixels"), self.channels, size, "vision.timm")
        dtype = next(self.model.parameters()).dtype
        pixels = pixels.to(dtype)
        b = pixels.shape[0]
        present = inputs.get("present")
        if present is None:
            present = torch.ones(b, dtype=torch.bool, device=pixels.device)
        present = present.to(device=pixels.device, dtype=torch.bool)
        if present.shape != (b,):
            raise ValueError(f"vision.timm: inputs['present'] has shape {tuple(present.shape)}, expected ({b},)")
        if bool(present.all()):
            embeds = self._to_tokens(self.features(pixels))  # (B, N, D)
        else:
            idx = present.nonzero().squeeze(1)  # the images that exist
            if idx.numel() == 0:
                n = self._count_tokens(pixels)
                embeds = pixels.new_zeros(b, n, self.out_dim)
            else:
                sub = self._to_tokens(self.features(pixels.index_select(0, idx)))  # (b', N, D)
                embeds = sub.new_zeros(b, *sub.shape[1:]).index_copy(0, idx, sub)
        if self.num_tokens is None:
            self.num_tokens = int(embeds.shape[1])
        mask = present.unsqueeze(1).expand(b, embeds.shape[1]).contiguous()
        return Tokens(embeds=embeds, mask=mask)

    def train(self, mode: bool = True) -> "TimmEncoder":
        """Set the training mode; a fully frozen encoder (``freeze = true``) stays in eval mode.

        A frozen feature extractor keeps its batch-norm statistics and runs without
        dropout/drop-path: ``requires_grad_(False)`` alone would still let training-mode
        batch norm move its running statistics.
        """
        super().train(mode)
        if mode and not any(p.requires_grad for p in self.parameters()):
            self.model.eval()
        return self

    def extra_repr(self) -> str:
        feats = "last" if self.feature_index is None else f"stage {self.feature_index}"
        return (
            f"model={self.model_name!r}, image_size={self.image_size}, features={feats}, tokens={self.num_tokens}, "
            f"out_dim={self.out_dim}"
        )


class _Features(nn.Module):
    """``encoder.features`` as a module's forward, for the meta-device shape pass."""

    def __init__(self, encoder: TimmEncoder):
        super().__init__()
        self.model = encoder.model
        object.__setattr__(self, "_encoder", encoder)  # not a submodule: no parameter-name prefix

    def forward(self, x: Tensor) -> Tensor:
        return self._encoder.features(x)


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return int(v[0]), int(v[-1])
    return int(v), int(v)


# --- non-persistent buffers ---------------------------------------------------------------------
#
# Some timm models (Swin, LeViT, relative-position ViTs...) keep index tables in buffers
# that are not saved. mmcore.load builds the model on the meta device and then calls
# ``reset_buffers()`` on every module holding such a buffer; timm modules have no such
# method, so each gets one that copies the values from a reference model built on the CPU.


class _BufferReset:
    """``module.reset_buffers()``: refill its non-persistent buffers from a CPU reference model."""

    def __init__(self, module: nn.Module, path: str, key: tuple[Any, ...]):
        self.module = module
        self.path = path
        self.key = key

    def __call__(self) -> None:
        reference = _reference_buffers(*self.key)
        with torch.no_grad():
            for name in self.module._non_persistent_buffers_set:
                buf = getattr(self.module, name, None)
                full = f"{self.path}.{name}" if self.path else name
                if buf is None or full not in reference:
                    continue
                value = reference[full].to(device=buf.device)
                if buf.is_meta or buf.shape != value.shape:
                    self.module._buffers[name] = value.to(dtype=buf.dtype)
                else:
                    buf.copy_(value)


@functools.lru_cache(maxsize=4)
def _reference_buffers(name: str, args: tuple[tuple[str, Any], ...], channels: int) -> dict[str, Tensor]:
    with torch.device("cpu"):
        model = _timm().create_model(name, pretrained=False, num_classes=0, in_chans=channels, **dict(args))
    out = {}
    for path, module in model.named_modules():
        for b in module._non_persistent_buffers_set:
            t = getattr(module, b, None)
            if t is not None:
                out[f"{path}.{b}" if path else b] = t.detach().clone()
    return out


def _install_buffer_resets(model: nn.Module, name: str, args: dict[str, Any], channels: int) -> None:
    key = (name, tuple(sorted(args.items())), channels)
    for path, module in model.named_modules():
        if module._non_persistent_buffers_set and not hasattr(module, "reset_buffers"):
            module.reset_buffers = _BufferReset(module, path, key)
