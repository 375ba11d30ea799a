"""Sharded checkpoints of FSDP2 runs, written by every process with ``torch.distributed.checkpoint``.

A run with ``training.distributed = "fsdp"`` under torchrun never gathers the whole model into
one process to checkpoint it: each process writes its own shards of the weights and of the
optimizer state with ``torch.distributed.checkpoint`` (DCP), so a model that fits no single host
can still be checkpointed and resumed. The checkpoint folder ``checkpoints/step-N/`` holds::

    sharded/                 DCP: .metadata and one __<rank>_0.distcp file per process
    rng-rank<R>.safetensors  each process's torch (and CUDA) random generator state
    spec.toml, processors/   what is needed to rebuild the model (written by rank 0)
    trainer_state.json       step, data positions, world size, "format": "sharded" (written last)

:func:`consolidate` (``mmcore consolidate CHECKPOINT OUT``) turns such a checkpoint into an
ordinary model directory (safetensors, loads with :func:`mmcore.load`) in one process, without
a process group; at the end of training the trainer also writes the final model directory
itself (gathering the full weights on rank 0).

Resume with the same number of processes; DCP reshards the weights, but the data positions of
each process assume the same world size.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import SPEC
from .errors import ModelDirError
from .io import atomic_write_text, write_safetensors

__all__ = ["SHARDED", "is_sharded", "save_sharded", "load_sharded", "consolidate"]

SHARDED = "sharded"
PROCESSORS = "processors"


def is_sharded(directory: str | Path) -> bool:
    """Whether ``directory`` is a sharded (FSDP) checkpoint folder."""
    return (Path(directory) / SHARDED / ".metadata").is_file()


def _rng_file(directory: Path, rank: int) -> Path:
    return directory / f"rng-rank{rank}.safetensors"


def _states(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optim_state}


def save_sharded(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, rank: int, extra: dict[str, torch.Tensor]
) -> None:
    """Collective: every process writes its shards of the weights and the optimizer state to
    ``directory/sharded`` and its RNG state to ``rng-rank<R>.safetensors``; rank 0 also
    writes ``spec.toml`` and ``processors/``. ``extra``: replicated tensors (an objective's
    own weights), saved once. ``directory`` must exist and be empty of older shards."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    state = _states(model, optimizer)
    if extra:
        state["extra"] = dict(extra)
    dcp.save(state, checkpoint_id=str(directory / SHARDED))
    rng = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["rng.cuda"] = torch.cuda.get_rng_state()
    write_safetensors(_rng_file(directory, rank), rng)
    if rank == 0:
        atomic_write_text(directory / SPEC, model.spec.to_toml())
        for name, proc in getattr(model, "processors", {}).items():
            pdir = directory / PROCESSORS / name
            pdir.mkdir(parents=True, exist_ok=True)
            proc.save(str(pdir))
    dist.barrier()  # every shard is on disk before rank 0 writes the trainer state and `latest`


def load_sharded(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, rank: int, extra: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Collective: restore the weights, the optimizer state and this process's RNG from a
    checkpoint :func:`save_sharded` wrote (DCP reshards as needed). ``extra``: tensors of
    the same names and shapes as when saved, filled in place and returned."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    from .io import read_safetensors

    state = _states(model, optimizer)
    if extra:
        state["extra"] = dict(extra)
    dcp.load(state, checkpoint_id=str(directory / SHARDED))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    path = _rng_file(directory, rank)
    if not path.is_file():
        raise ModelDirError(f"{directory}: no random generator state for process {rank} ({path.name})")
    rng, _ = read_safetensors(path)
    torch.set_rng_state(rng["rng.torch"])
    if "rng.cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["rng.cuda"])
    return state.get("extra", {})


def consolidate(checkpoint: str | Path, out: str | Path, *, registry: Any = None) -> Path:
    """Turn a sharded checkpoint into an ordinary model directory ``out`` (one process, no
    process group: every shard is read into the full tensors). Returns ``out``."""
    import torch.distributed.checkpoint as dcp

    from .builder import assemble
    from .checkpoint import save
    from .spec import load_spec

    checkpoint = Path(checkpoint)
    if not is_sharded(checkpoint):
        raise ModelDirError(
            f"{checkpoint}: not a sharded checkpoint (no {SHARDED}/.metadata); an FSDP run writes them under "
            "<out>/checkpoints/step-N/"
        )
    spec_path = checkpoint / SPEC
    if not spec_path.is_file():
        raise ModelDirError(f"{checkpoint}: {SPEC} is missing (the checkpoint is incomplete)")
    spec = load_spec(spec_path)
    model = assemble(spec, registry=registry, weights=False)
    state = model.state_dict()
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.load({"model": state}, checkpoint_id=str(checkpoint / SHARDED), no_dist=True)
    model.load_state_dict(state)
    for name, proc in model.processors.items():
        pdir = checkpoint / PROCESSORS / name
        if pdir.is_dir():
            proc.load(str(pdir))
    out = Path(out)
    if out.resolve() == checkpoint.resolve():
        raise ModelDirError(f"{out}: write the model directory somewhere else than the checkpoint")
    return save(model, out)


def remove_stale(directory: Path) -> None:
    """Rank 0, before a collective save: a folder of the same step left by a killed run goes."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
