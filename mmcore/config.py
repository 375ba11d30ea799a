"""Configuration models owned by the core.

These models import pydantic only (never torch), so validating a spec stays fast.
Component configuration models subclass :class:`ComponentConfig`.
"""

from __future__ import annotations

from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

__all__ = [
    "ComponentConfig",
    "BackboneConfig",
    "TrainingConfig",
    "StageConfig",
    "TaskConfig",
    "derived_lr",
    "resolve_training",
    "stage_shares",
    "CoreOptions",
    "LoraConfig",
    "WeightsSource",
    "RopeScaling",
]


class ComponentConfig(BaseModel):
    """Base class of every component's options model.

    Unknown keys are errors (``extra="forbid"``): a typo in a spec is reported, never
    silently ignored. Subclasses add typed fields with defaults and a docstring per
    field (``Field(description=...)``); the descriptions appear in ``mmcore spec schema``
    and in docs/spec.md.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


class RopeScaling(BaseModel):
    """``[backbone] rope_scaling``: how rotary frequencies are scaled (a checkpoint's ``rope_scaling``).

    * ``linear``: every frequency divided by ``factor`` (positions stretched ``factor`` times).
    * ``llama3``: Llama 3.1's rule: wavelengths shorter than ``original_context_length /
      high_freq_factor`` are kept, those longer than ``original_context_length / low_freq_factor``
      are divided by ``factor``, and the band between is interpolated smoothly.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["linear", "llama3"] = Field(description="The scaling rule: 'linear' or 'llama3'.")
    factor: float = Field(gt=0, description="Scaling factor.")
    low_freq_factor: float = Field(1.0, gt=0, description="llama3 only: the low-frequency factor.")
    high_freq_factor: float = Field(4.0, gt=0, description="llama3 only: the high-frequency factor.")
    original_context_length: int = Field(
        8192, gt=0, description="llama3 only: the context length the model was pretrained with."
    )

    @model_validator(mode="after")
    def _check_factors(self) -> "RopeScaling":
        if self.type == "llama3" and self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(
                f"rope_scaling: high_freq_factor ({self.high_freq_factor:g}) must exceed low_freq_factor "
                f"({self.low_freq_factor:g})"
            )
        return self


class BackboneConfig(BaseModel):
    """The GPT backbone: a pre-norm decoder-only transformer owned by the core.

    Defaults describe a small GPT-2-like model that trains on a CPU.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- size -------------------------------------------------------------------
    width: int = Field(256, gt=0, description="Model width D (embedding size); divisible by heads.")
    depth: int = Field(4, gt=0, description="Number of transformer blocks.")
    heads: int = Field(4, gt=0, description="Attention heads per block.")
    kv_heads: int | None = Field(
        None,
        gt=0,
        description="Key/value heads per block (grouped-query attention, as in Llama, Qwen2 and Mistral): each "
        "serves heads / kv_heads query heads; heads must be a multiple of it. Default: heads (multi-head "
        "attention). The KV cache holds kv_heads heads.",
    )
    context_length: int = Field(
        256, gt=0, description="Longest fused sequence (all modalities plus text) the model accepts."
    )
    # --- block options ----------------------------------------------------------
    norm: Literal["layernorm", "rmsnorm"] = Field("layernorm", description="Normalisation layer.")
    norm_eps: float = Field(1e-5, gt=0, description="Epsilon of the normalisation layers.")
    positions: Literal["learned", "rope", "none"] = Field(
        "learned",
        description="Learned absolute position embeddings (GPT-2), rotary (RoPE) or none. Left unset in a spec "
        "with a task whose objective predicts tokens from both sides (mlm) and no weights_from: rope (a bidirectional model with "
        "learned positions stalls: docs/tuning.md).",
    )
    rope_base: float = Field(10000.0, gt=0, description="Base frequency of rotary embeddings.")
    rope_scaling: RopeScaling | None = Field(
        None,
        description="Rotary frequency scaling, as a checkpoint's rope_scaling says: none (default), "
        "{type = 'linear', factor = F} or {type = 'llama3', factor, low_freq_factor, high_freq_factor, "
        "original_context_length}.",
    )
    rope_layout: Literal["half", "interleaved"] = Field(
        "half",
        description="Which head-size entries rotate together: 'half' pairs entry i with i + hd/2 (GPT-NeoX and "
        "Hugging Face Llama/Qwen2/Mistral checkpoints); 'interleaved' pairs 2i with 2i+1 (Meta's original Llama "
        "and GPT-J layout).",
    )
    mlp: Literal["gelu", "gelu_tanh", "swiglu"] = Field(
        "gelu",
        description="Feed-forward type: GELU (exact), GELU with tanh approximation (GPT-2's 'gelu_new'), "
        "or SwiGLU (gated, as in LLaMA).",
    )
    mlp_ratio: float = Field(
        4.0, gt=0, description="Hidden width of the feed-forward as a multiple of width (SwiGLU: use ~8/3)."
    )
    mlp_hidden: int | None = Field(
        None,
        gt=0,
        description="Hidden width of the feed-forward exactly (a checkpoint's intermediate_size); when given it "
        "wins over mlp_ratio, which is set to mlp_hidden / width. Default: int(mlp_ratio * width).",
    )
    bias: bool = Field(True, description="Bias in linear and normalisation layers (GPT-2: true).")
    qkv_bias: bool | None = Field(
        None,
        description="Bias in the query/key/value projection alone (Qwen2: true with bias = false). Default: as bias.",
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on attention output, MLP and embeddings.")
    attention: Literal["causal", "prefix", "bidirectional"] = Field(
        "causal",
        description="Default attention mode: causal (next-token LM), prefix (bidirectional over the "
        "conditioning prefix, causal after it) or bidirectional (masked LM). Objectives may override it.",
    )
    init_std: float = Field(0.02, gt=0, description="Standard deviation of the normal weight initialisation.")

    @model_validator(mode="after")
    def _check_heads(self) -> "BackboneConfig":
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")
        if self.positions == "rope" and (self.width // self.heads) % 2:
            raise ValueError(f"rotary positions need an even head size; width/heads = {self.width // self.heads}")
        if self.kv_heads is None:
            object.__setattr__(self, "kv_heads", self.heads)  # filled in: always an int once validated
        elif self.heads % self.kv_heads:
            raise ValueError(
                f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads}): each key/value head "
                "serves the same number of query heads"
            )
        from_ratio = int(self.mlp_ratio * self.width)
        if self.mlp_hidden is None:
            object.__setattr__(self, "mlp_hidden", from_ratio)  # filled in: always an int once validated
        elif "mlp_ratio" not in self.model_fields_set:
            object.__setattr__(self, "mlp_ratio", self.mlp_hidden / self.width)
        elif self.mlp_hidden not in (from_ratio, round(self.mlp_ratio * self.width)):
            raise ValueError(
                f"mlp_hidden ({self.mlp_hidden}) and mlp_ratio ({self.mlp_ratio:g}, which gives {from_ratio} at "
                f"width {self.width}) disagree; give one of them"
            )
        return self

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def kv_width(self) -> int:
        """Width of the keys (and of the values): ``kv_heads * head_dim``."""
        return cast(int, self.kv_heads) * self.head_dim

    @property
    def attn_bias(self) -> bool:
        """Whether the query/key/value projection has a bias: ``qkv_bias``, else ``bias``."""
        return self.bias if self.qkv_bias is None else self.qkv_bias


class StageConfig(BaseModel):
    """``[[training.stages]]``: one stage of a training plan (its tasks, steps and schedule)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(None, description="A name for logs (default: stage-N for the N-th stage).")
    tasks: list[str] | None = Field(
        None, min_length=1, description="The tasks this stage trains, a subset of [tasks] (default: all of them)."
    )
    steps: int | None = Field(
        None,
        gt=0,
        description="Optimizer steps of this stage (default: a share of what training.steps leaves after the "
        "stages that set theirs, in proportion to the summed sampling weights of the stage's tasks, so each unit "
        "of task weight gets about as many steps in every stage; a curriculum can then be written without numbers).",
    )
    lr: float | None = Field(
        None,
        gt=0,
        description="Peak learning rate of this stage (default: training.lr; where training.lr is left to be "
        "derived, stages after the first get half of it).",
    )
    warmup_steps: int | None = Field(
        None, ge=0, description="Warmup steps of this stage (default: training.warmup_steps)."
    )
    reset_optimizer: bool = Field(
        False,
        description="Start this stage with a fresh optimizer state (AdamW's moment estimates and step count), "
        "as if a new run began from the current weights.",
    )


_TIME_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> Any:
    """Seconds from a number or a string such as ``"90"``, ``"90s"``, ``"10m"``, ``"1.5h"``.

    Other values are returned unchanged, for the field's own validation to reject.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        unit = _TIME_UNITS.get(text[-1:]) if text else None
        number = text[:-1] if unit is not None else text
        try:
            return float(number) * (unit or 1.0)
        except ValueError:
            raise ValueError(f"a duration is seconds or a string like '90s', '10m', '1.5h'; got {value!r}") from None
    return value


#: Where ``training.log_to`` sends logged steps and evaluations.
LogTarget = Literal["jsonl", "tensorboard"]


class TrainingConfig(BaseModel):
    """``[training]``: how ``mmcore train`` optimises the model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- length and batches ---------------------------------------------------------
    steps: int = Field(
        1500,
        gt=0,
        description="Optimizer steps to train for (with [[training.stages]]: their sum, set for you). Default 1500: "
        "with batch 32, what the main job's tasks need to come within a couple of points of its tuned recipe "
        "(docs/tuning.md).",
    )
    batch_size: int = Field(
        32,
        gt=0,
        description="Records per micro-batch, across all processes (divisible by the process count). Default 32 "
        "(docs/tuning.md).",
    )
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step (effective batch = both).")
    group_by_length: bool = Field(
        False,
        description="Batch records of similar length together (JSONL manifests; length = a record's size in "
        "bytes): less padding, faster steps when lengths vary. Windows of 64 batches are sorted by length and "
        "the batches shuffled, so the data order stays random and reproducible.",
    )
    # --- optimizer (AdamW) and schedule -----------------------------------------------
    lr: float | None = Field(
        None,
        gt=0,
        description="Peak learning rate. Default: derived from the backbone's width, 0.2 / width within "
        "[1e-4, 3e-3] (2.1e-3 at width 96, 1.6e-3 at 128, 7.8e-4 at 256; docs/tuning.md), and half of that in "
        "[[training.stages]] after the first that set no lr; the run prints it.",
    )
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final learning rate as a fraction of lr (cosine/linear).")
    schedule: Literal["cosine", "linear", "constant"] = Field(
        "linear",
        description="Decay after warmup, to min_lr_ratio * lr. Default linear: at a fixed step budget it beat "
        "cosine by about a point and constant by 15 on the main job (docs/tuning.md).",
    )
    warmup_steps: int | None = Field(
        None,
        ge=0,
        description="Linear warmup from 0 to lr over this many steps. Default: 5 % of steps (at most 200); "
        "the run prints it.",
    )
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not applied to biases and norms).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    clip_grad: float | None = Field(1.0, gt=0, description="Clip the global gradient norm to this (none: no clipping).")
    # --- numerics and devices ----------------------------------------------------------
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Autocast precision; bf16 on CPU and recent GPUs, fp16 on GPUs only (with loss scaling)."
    )
    device: str = Field("auto", description="'auto' (CUDA when available, else CPU), 'cpu', 'cuda', 'cuda:1', ...")
    seed: int = Field(0, description="Seed of initialisation, data order and masking: a run is reproducible.")
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp", description="Under torchrun: DDP (replicated model) or FSDP2 (sharded, for models that do not fit)."
    )
    # --- evaluation, checkpoints, logs ---------------------------------------------------
    eval_every: int = Field(0, ge=0, description="Evaluate every N steps (0: only at the end).")
    eval_batches: int | None = Field(None, gt=0, description="Batches per evaluation (none: the whole eval set).")
    checkpoint_every: int = Field(
        0, ge=0, description="Write a resumable checkpoint every N steps (0: only at the end)."
    )
    keep_checkpoints: int = Field(2, gt=0, description="How many recent checkpoints to keep.")
    log_every: int = Field(10, gt=0, description="Log metrics every N steps.")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (processors run there).")
    on_bad_record: Literal["skip", "error"] = Field(
        "skip", description="A record that fails to load: skip it (counted and reported) or stop the run."
    )
    progress: bool = Field(
        True,
        description="On a terminal, a live progress bar (step, running loss per task, lr, positions/s, ETA); "
        "elsewhere, or when false, a plain line every log_every steps.",
    )
    log_to: list[LogTarget] = Field(
        default_factory=lambda: list[LogTarget](["jsonl"]),
        description="Where logged steps and evaluations go: 'jsonl' (metrics.jsonl in the output folder) and/or "
        "'tensorboard' (event files in <out>/tensorboard; needs pip install \"mmcore[tensorboard]\").",
    )
    compile: bool = Field(
        False,
        description="Compile the training forward with torch.compile (inductor; needs a C/C++ compiler on CPU). "
        "The first steps pay the compile time; evaluation and generation stay eager.",
    )
    # --- training plans and budgets -----------------------------------------------------
    stages: list[StageConfig] = Field(
        default_factory=list,
        description="A training plan: [[training.stages]] run in order, each with its tasks, steps and optional "
        "lr / warmup_steps; the schedule restarts in each stage. steps is then the sum of the stages' steps; "
        "stages that leave their steps out share what training.steps leaves in proportion to their tasks' summed "
        "weights (equally where the tasks are not known: a TrainingConfig validated outside a spec).",
    )
    max_time: float | str | None = Field(
        None,
        description="Wall-clock budget of the run, in seconds or as '90s', '10m', '1.5h'. The learning-rate "
        "schedule runs over the budget (progress = max(step / steps, elapsed / max_time)); the run stops when "
        "either is used up, then evaluates and saves. With stages, stage i must end by max_time times the "
        "fraction of all steps that stages 1..i hold.",
    )
    # --- model selection ------------------------------------------------------------------
    monitor: str | None = Field(
        None,
        description="The evaluation metric that picks the best model and drives early stopping, as "
        "'TASK.METRIC' (e.g. 'match.accuracy'); default: the loss of the first task with an eval set.",
    )
    monitor_mode: Literal["auto", "min", "max"] = Field(
        "auto", description="Whether lower or higher is better; 'auto': min for loss and perplexity, else max."
    )
    patience: int = Field(
        0,
        ge=0,
        description="Early stopping: end the stage (the run, without stages) after this many evaluations in a row "
        "without improving the monitored metric by more than min_delta (0: never stop early).",
    )
    min_delta: float = Field(0.0, ge=0, description="Early stopping: the least change that counts as improving.")
    ema: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Keep an exponential moving average of the trained weights with this decay (e.g. 0.999; "
        "the decay ramps up as min(ema, (1 + n) / (10 + n)) over the first n updates). Evaluation, best/ and "
        "the saved model then use the averaged weights; none: off.",
    )

    @field_validator("max_time", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return parse_duration(v)

    @field_validator("max_time")
    @classmethod
    def _positive_time(cls, v: Any) -> Any:
        if v is not None and (isinstance(v, str) or not v > 0 or v == float("inf")):
            raise ValueError(f"max_time must be a positive, finite number of seconds, got {v!r}")
        return v

    @field_validator("monitor")
    @classmethod
    def _monitor_form(cls, v: str | None) -> str | None:
        if v is not None and (v.count(".") < 1 or not all(v.rsplit(".", 1))):
            raise ValueError(f"monitor is 'TASK.METRIC', e.g. 'caption.loss' or 'match.accuracy'; got {v!r}")
        return v

    @model_validator(mode="after")
    def _check_stages(self, info: ValidationInfo) -> "TrainingConfig":
        if not self.stages:
            return self
        unset = [i for i, s in enumerate(self.stages) if s.steps is None]
        if unset:
            left = self.steps - sum(s.steps or 0 for s in self.stages)
            if left < len(unset):
                raise ValueError(
                    f"training.steps = {self.steps} leaves {left} steps for the {len(unset)} stage(s) without steps "
                    f"({', '.join(f'training.stages[{i}]' for i in unset)}); raise training.steps or give each stage "
                    "its steps"
                )
            weights = (info.context or {}).get("task_weights") if info is not None else None
            shares = stage_shares(left, [self.stages[i].tasks for i in unset], weights)
            stages = list(self.stages)
            for i, n in zip(unset, shares, strict=True):
                stages[i] = stages[i].model_copy(update={"steps": n})
            object.__setattr__(self, "stages", stages)
            return self
        total = sum(s.steps for s in self.stages if s.steps is not None)  # every stage has its steps here
        if "steps" in self.model_fields_set and self.steps != total:
            raise ValueError(
                f"steps = {self.steps} but the stages hold {total} steps; leave steps out with [[training.stages]] "
                "(it is their sum)"
            )
        object.__setattr__(self, "steps", total)
        return self


def stage_shares(
    total: int, stage_tasks: list[list[str] | None], task_weights: dict[str, float] | None = None
) -> list[int]:
    """``total`` steps split among stages, each at least 1, summing to ``total``.

    With ``task_weights`` (task name -> sampling weight, every task of the spec), a stage's
    share is in proportion to the summed weights of its tasks (``None``: all of them), so a
    stage of one task among three gets a third of what the closing stage of all three gets,
    and every unit of task weight about the same steps in each stage; without them, equal
    shares. Rounding is by largest remainder. On the main job, the curriculum without numbers
    with equal shares (500 + 500 + 500 steps) left the match at 81.3 %; by weight
    (250 + 250 + 1000): see docs/tuning.md, round 8.
    """
    n = len(stage_tasks)
    raw = [1.0] * n
    if task_weights:
        raw = [sum(task_weights.get(t, 1.0) for t in (ts if ts is not None else task_weights)) for ts in stage_tasks]
        if not all(w > 0 for w in raw):
            raw = [1.0] * n
    exact = [total * w / sum(raw) for w in raw]
    shares = [max(1, int(x)) for x in exact]
    for k in sorted(range(n), key=lambda k: (shares[k] - exact[k], k))[: max(0, total - sum(shares))]:
        shares[k] += 1
    while sum(shares) > total:  # the stages raised to 1 step took it from the largest
        shares[shares.index(max(shares))] -= 1
    return shares


def derived_lr(width: int | None) -> float:
    """The default peak learning rate for a backbone of ``width``: 0.2 / width within [1e-4, 3e-3].

    Measured on the recipes (docs/tuning.md): at width 96 the best fixed-budget rates were
    1e-3 to 2e-3, at width 128 1e-3 to 2e-3; larger widths follow the usual 1 / width
    scaling of Adam's step for hidden matrices.
    """
    if not width:
        return 1e-3
    return float(min(3e-3, max(1e-4, 0.2 / width)))


def resolve_training(cfg: TrainingConfig, width: int | None) -> tuple[TrainingConfig, list[str]]:
    """``cfg`` with the values the spec left unset (lr, warmup_steps) derived; and what was chosen, in words.

    With [[training.stages]] and no training.lr, the first stage keeps the derived rate (or
    its own) and every later stage without its own lr runs at half the derived rate: on
    the main job's curriculum without numbers that lifted the match (docs/tuning.md, round 8).
    """
    update: dict[str, Any] = {}
    notes = []
    if cfg.lr is None:
        update["lr"] = derived_lr(width)
        notes.append(f"lr {update['lr']:.2g} (0.2 / backbone width {width}, within [1e-4, 3e-3])")
        later = [i for i, s in enumerate(cfg.stages) if i > 0 and s.lr is None]
        if later:  # later stages go on from weights the earlier ones trained: half the peak rate
            half = update["lr"] / 2
            update["stages"] = [
                s.model_copy(update={"lr": half}) if i in later else s for i, s in enumerate(cfg.stages)
            ]
            names = ", ".join(cfg.stages[i].name or f"stage-{i + 1}" for i in later)
            notes.append(f"lr {half:.2g} in {names} (half the derived lr: a later stage goes on from trained weights)")
    if cfg.warmup_steps is None:
        update["warmup_steps"] = min(200, round(0.05 * cfg.steps))
        notes.append(f"warmup_steps {update['warmup_steps']} (5 % of {cfg.steps} steps, at most 200)")
    return (cfg.model_copy(update=update) if update else cfg), notes


class TaskConfig(BaseModel):
    """``[tasks.<name>]``: one dataset with its objective, head and sampling weight."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    objective: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$",
        description="A registered objective (`mmcore plugins` lists them). The core's: lm: next token (causal); "
        "mlm: masked tokens (bidirectional); prefix_lm: target given a conditioning prefix (captioning, "
        "speech-to-text, translation); classification: a label. Plugins add others (mmcore-heads: regression).",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="The objective's own options, validated by its options model (e.g. regression: {field = 'y'}).",
    )
    train: str = Field(description="Training data: a JSONL manifest, or text files (one document a line).")
    eval: str | None = Field(None, description="Held-out data in the same format.")
    format: Literal["auto", "jsonl", "text"] = Field("auto", description="'auto': .jsonl is a manifest, else text.")
    head: str | None = Field(None, description="The head this task trains (default: the model's only head).")
    weight: float = Field(1.0, gt=0, description="Sampling weight among tasks (multi-task training).")
    loss_weight: float = Field(1.0, gt=0, description="Multiplier of this task's loss.")
    attention: Literal["causal", "prefix", "bidirectional"] | None = Field(
        None,
        description="Attention mode override (default: causal for lm and classification, prefix for prefix_lm, "
        "bidirectional for mlm).",
    )
    seq_len: int | None = Field(None, gt=1, description="Text corpora: tokens per packed sequence (default: context).")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="mlm: fraction of tokens to predict (80/10/10).")
    label: str = Field("label", description="classification: the record field holding the label.")
    labels: list[str] | None = Field(None, description="classification: class names, if labels are strings.")
    text_input: str = Field("text", description="The text input that lm/mlm/prefix_lm objectives read.")
    target_field: str = Field(
        "target",
        description="The record field holding the text input's target (prefix_lm: the loss is on it; `mmcore eval "
        "--generate` scores generations against it). When it names the text input itself, the whole text is the "
        "target of an empty prompt.",
    )
    # --- knowledge distillation (training only; evaluation reports the task's own metrics) ---
    teacher: str | None = Field(
        None,
        description="Distillation: a trained model directory (same tokenizer and inputs) whose predictions the "
        "head also learns; lm, prefix_lm and classification tasks.",
    )
    teacher_head: str | None = Field(None, description="Distillation: the teacher's head (default: the task's head).")
    distill_alpha: float = Field(
        0.5, ge=0, le=1, description="Distillation: weight of the teacher's soft targets; 1 - alpha on the labels."
    )
    distill_temperature: float = Field(
        2.0, gt=0, description="Distillation: softmax temperature of both models' logits (the KL is scaled by T^2)."
    )
    distill_hidden: float = Field(
        0.0,
        ge=0,
        description="Distillation: weight of the mean squared error between the student's hidden states (through a "
        "learned linear map when the widths differ) and the teacher's, at the positions the head reads.",
    )

    @model_validator(mode="after")
    def _check_distill(self) -> "TaskConfig":
        if self.teacher is None:
            changed = [
                k
                for k, default in (
                    ("teacher_head", None),
                    ("distill_alpha", 0.5),
                    ("distill_temperature", 2.0),
                    ("distill_hidden", 0.0),
                )
                if getattr(self, k) != default
            ]
            if changed:
                raise ValueError(f"{', '.join(changed)} only apply with a teacher (teacher = 'path/to/model_dir')")
        return self


# --- options every component section takes (the backbone's too) ---------------------------


class LoraConfig(BaseModel):
    """``lora = {...}``: low-rank adapters on a component's linear layers (``train = "lora"``).

    Each target ``nn.Linear`` becomes ``y = base(x) + (alpha / rank) * B(A(dropout(x)))``
    with the base weight frozen, ``A`` (rank x in) initialised like a linear layer and ``B``
    (out x rank) zero, so the component computes exactly what it did before training.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: int = Field(8, gt=0, description="Rank r of the update B @ A.")
    alpha: float = Field(16.0, gt=0, description="Scale: the update is multiplied by alpha / rank.")
    targets: list[str] = Field(
        default_factory=lambda: ["qkv", "proj"],
        min_length=1,
        description="Which nn.Linear layers of the component get adapters: a name matches its last parts "
        "('qkv' matches 'blocks.0.attn.qkv', 'attn.proj' matches 'blocks.3.attn.proj') or a glob on the "
        "whole name ('blocks.*.mlp.*'). Every target must match at least one layer.",
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter's input during training.")


class WeightsSource(BaseModel):
    """``weights_from = "file.safetensors"`` or ``weights_from = {path = ..., prefix = {...}, ...}``.

    Reads the component's initial weights from a safetensors file. Keys are mapped with
    ``prefix`` (file prefix -> component prefix; the longest matching file prefix wins; with a
    mapping, file keys that match no prefix are ignored), then ``ignore`` drops keys, then every
    remaining key must name a parameter or buffer of the component with the same shape.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(
        description="A .safetensors file (a model folder with format = 'hf'); a relative path resolves against "
        "the spec file's folder."
    )
    prefix: dict[str, str] = Field(
        default_factory=dict,
        description='Key-prefix mapping, file -> component: {"vision_model." = ""} strips a prefix, '
        '{"" = "model."} adds one. With a mapping, keys outside it are ignored (and reported).',
    )
    ignore: list[str] = Field(
        default_factory=list, description="Glob patterns of file keys to leave out (e.g. a classifier: 'head.*')."
    )
    format: Literal["auto", "mmcore", "gpt2", "hf"] = Field(
        "auto",
        description="Key layout: 'mmcore' (the component's own parameter names), 'gpt2' (Hugging Face GPT-2, "
        "backbone only: transposed Conv1D weights, transformer.h.N... names), 'hf' (backbone only: path is a "
        "Hugging Face Llama, Qwen2 or Mistral folder, config.json and model.safetensors or its shards; it fills "
        "the backbone, the LM head's text embedding and an untied LM head, and config.json is checked against "
        "the spec) or 'auto' (gpt2 when the backbone's file looks like GPT-2, else mmcore).",
    )
    allow_missing: bool = Field(
        False,
        description="Keep the fresh initialisation of parameters the file lacks (listed in the load report) "
        "instead of refusing the file.",
    )


class CoreOptions(BaseModel):
    """What the core reads from every component section, the backbone's included.

    ``freeze = true`` is kept as another way to write ``train = "frozen"``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    train: Literal["full", "frozen", "lora"] = Field(
        "full",
        description="Training policy: 'full' (every parameter trains), 'frozen' (none does) or 'lora' (only "
        "low-rank adapters on the `lora.targets` layers train; the rest is frozen).",
    )
    lora: LoraConfig | None = Field(
        None, description="Adapter options, with train = 'lora' (default rank 8, alpha 16, targets qkv and proj)."
    )
    weights_from: WeightsSource | None = Field(
        None, description="Initial weights from a safetensors file (a path, or a table: see weights_from below)."
    )

    @model_validator(mode="before")
    @classmethod
    def _short_forms(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("weights_from"), str):
            data = {**data, "weights_from": {"path": data["weights_from"]}}
        return data

    @model_validator(mode="after")
    def _check_lora(self) -> "CoreOptions":
        if self.lora is not None and "train" not in self.model_fields_set:
            object.__setattr__(self, "train", "lora")  # `lora = {...}` alone means train = "lora"
        if self.train == "lora" and self.lora is None:
            object.__setattr__(self, "lora", LoraConfig())
        if self.train != "lora" and self.lora is not None:
            raise ValueError(f"lora options are given but train = {self.train!r}; set train = 'lora' to use them")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The keys a resolved spec writes: ``train``, and ``lora``/``weights_from`` when set."""
        out: dict[str, Any] = {"train": self.train}
        if self.lora is not None:
            out["lora"] = self.lora.model_dump(mode="json")
        if self.weights_from is not None:
            out["weights_from"] = self.weights_from.model_dump(mode="json")
        return out
