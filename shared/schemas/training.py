"""Training configuration: presets, hyperparameters and the spec handed to a trainer.

The API resolves a request (`preset` plus per-field overrides) into concrete
`Hyperparameters`; the worker wraps those with the skill's data into a
`TrainingSpec`, which is all a trainer (local subprocess or Modal) ever sees.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.schemas.text import NoNulStrings

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"


class Preset(StrEnum):
    QUICK = "quick"
    STANDARD = "standard"
    DEEP = "deep"
    CUSTOM = "custom"


class Hyperparameters(BaseModel):
    """Concrete values a trainer uses. Defaults are the spec's (Unsloth's) QLoRA defaults."""

    model_config = ConfigDict(extra="forbid")

    lora_r: int = Field(16, ge=1, le=256, description="LoRA rank: capacity of the adapter.")
    lora_alpha: int = Field(16, ge=1, le=512, description="LoRA scaling; usually equal to r or 2r.")
    lora_dropout: float = Field(0.0, ge=0.0, le=0.5, description="Dropout on LoRA layers.")
    learning_rate: float = Field(2e-4, gt=0.0, le=1e-2, description="Peak learning rate.")
    epochs: int = Field(3, ge=1, le=50, description="Passes over the training examples.")
    batch_size: int = Field(2, ge=1, le=64, description="Examples per device per step.")
    gradient_accumulation_steps: int = Field(
        4, ge=1, le=64, description="Micro-batches per optimizer step (effective batch = batch_size x this)."
    )
    max_seq_length: int = Field(512, ge=32, le=8192, description="Tokens per example, longer ones are cut.")
    warmup_ratio: float = Field(0.03, ge=0.0, le=0.5, description="Share of steps spent warming up.")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Learning-rate schedule.")
    max_steps: int | None = Field(None, ge=1, le=100_000, description="Stop after this many steps (overrides epochs).")
    seed: int = Field(42, ge=0, description="Random seed, recorded for reproducibility.")
    gradient_checkpointing: bool | None = Field(
        None, description="Trade compute for memory. Unset: on for CUDA, off on CPU (it is ~20x slower there)."
    )
    packing: bool | None = Field(
        None,
        description="Pack short examples together into sequences of up to max_seq_length tokens for throughput; "
        "each example still attends only to itself (positions restart, block-diagonal attention). Unset: on "
        "from 100 examples; smaller skills train unpacked, since packing would cut their few optimizer steps.",
    )
    neftune_noise_alpha: float | None = Field(
        None,
        ge=0.0,
        le=50.0,
        description="NEFTune: uniform noise of this scale (divided by sqrt(sequence length x width)) added to "
        "the input embeddings while training, a regulariser for small data. None: off.",
    )
    early_stopping_patience: int = Field(
        0,
        ge=0,
        le=100,
        description="Stop once this many held-out evaluations in a row (each after about 10% of the steps) "
        "bring no new lowest loss; the best weights are kept either way. 0: train every step. Needs a held-out "
        "split (10 examples or more).",
    )
    drop_overlong: bool = Field(
        False,
        description="Drop the examples whose answer max_seq_length cuts, instead of refusing the run. Set by the "
        "out-of-memory recovery when it shortens max_seq_length; not a training option of its own.",
    )


SMALL_SKILL_EXAMPLES = 100
"""Below this many examples a skill is *small*: presets train longer and faster (docs/presets.md)."""

PRESET_DESCRIPTIONS: dict[Preset, str] = {
    Preset.QUICK: "One fast pass to check that everything works; the adapter learns little.",
    Preset.STANDARD: "The recommended default: the spec's QLoRA settings for 100+ examples; below that, lr 1e-3 "
    "at effective batch 4 for up to 8 epochs, stopping once the held-out loss stops improving.",
    Preset.DEEP: "More capacity and more epochs for harder skills; slower and costlier.",
    Preset.CUSTOM: "Start from Standard (for the skill's size) and set every value yourself.",
}

# Skills with SMALL_SKILL_EXAMPLES examples or more: the spec's (Unsloth's) QLoRA defaults.
PRESETS: dict[Preset, Hyperparameters] = {
    Preset.QUICK: Hyperparameters(lora_r=8, lora_alpha=8, epochs=1),
    Preset.STANDARD: Hyperparameters(),
    Preset.DEEP: Hyperparameters(lora_r=32, lora_alpha=32, epochs=5, learning_rate=1e-4),
    Preset.CUSTOM: Hyperparameters(),
}

# Smaller skills: at effective batch 8, 3 epochs of 9 examples are 6 optimizer steps, which barely
# move held-out loss. More, smaller steps at a higher rate do, and they reach the lowest held-out loss
# after 2 to 4 epochs, so training stops once 3 evaluations in a row (30% of the run) bring no new
# best; the epochs are a ceiling (measured on six skills: docs/presets.md, bench/presets.py).
SMALL_SKILL_STANDARD = Hyperparameters(
    epochs=8, learning_rate=1e-3, gradient_accumulation_steps=2, early_stopping_patience=3
)
SMALL_SKILL_PRESETS: dict[Preset, Hyperparameters] = {
    Preset.QUICK: Hyperparameters(lora_r=8, lora_alpha=8, epochs=1),
    Preset.STANDARD: SMALL_SKILL_STANDARD,
    Preset.DEEP: SMALL_SKILL_STANDARD.model_copy(update={"lora_r": 32, "lora_alpha": 32, "epochs": 12}),
    Preset.CUSTOM: SMALL_SKILL_STANDARD,
}


def preset_values(preset: Preset, example_count: int | None = None) -> Hyperparameters:
    """A preset's hyperparameters for a skill of `example_count` examples (None: the 100+ values)."""
    small = example_count is not None and example_count < SMALL_SKILL_EXAMPLES
    return (SMALL_SKILL_PRESETS if small else PRESETS)[preset]


class TrainingConfigRequest(NoNulStrings):
    """What a client sends: a preset, a base model, and any field to override."""

    model_config = ConfigDict(extra="forbid")

    preset: Preset = Field(Preset.STANDARD, description="quick, standard, deep or custom.")
    base_model: str = Field(DEFAULT_BASE_MODEL, description="A model id from GET /api/models.")
    lora_r: int | None = Field(None, ge=1, le=256)
    lora_alpha: int | None = Field(None, ge=1, le=512)
    lora_dropout: float | None = Field(None, ge=0.0, le=0.5)
    learning_rate: float | None = Field(None, gt=0.0, le=1e-2)
    epochs: int | None = Field(None, ge=1, le=50)
    batch_size: int | None = Field(None, ge=1, le=64)
    gradient_accumulation_steps: int | None = Field(None, ge=1, le=64)
    max_seq_length: int | None = Field(None, ge=32, le=8192)
    warmup_ratio: float | None = Field(None, ge=0.0, le=0.5)
    lr_scheduler: Literal["cosine", "linear", "constant"] | None = None
    max_steps: int | None = Field(None, ge=1, le=100_000)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)  # numpy's seed range, which transformers' set_seed uses
    gradient_checkpointing: bool | None = None
    packing: bool | None = None
    neftune_noise_alpha: float | None = Field(None, ge=0.0, le=50.0)
    early_stopping_patience: int | None = Field(None, ge=0, le=100)

    def resolve(self, example_count: int | None = None) -> Hyperparameters:
        """The preset's values for a skill of `example_count` examples, every explicitly set field laid over them."""
        overrides = self.model_dump(exclude={"preset", "base_model"}, exclude_none=True)
        return preset_values(self.preset, example_count).model_copy(update=overrides)


class TrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: TrainingConfigRequest = Field(default_factory=TrainingConfigRequest)


class Exchange(BaseModel):
    """One user message and the answer the skill should give."""

    user: str
    assistant: str


class Turn(Exchange):
    """One training example: its final exchange, and the earlier ones of a multi-turn conversation."""

    history: list[Exchange] = Field(
        default_factory=list, exclude_if=lambda value: not value, description="Earlier exchanges, oldest first."
    )


class TrainingSpec(BaseModel):
    """Everything a trainer needs for one attempt of one job; JSON-serialisable."""

    job_id: str
    skill_id: str
    base_model: str
    system_prompt: str
    conversations: list[Turn]
    hyperparameters: Hyperparameters
    output_dir: str = Field(description="Where the trainer writes the adapter (a staging dir).")
    models_dir: str = Field(description="Cache of converted/built base models.")
    attempt: int = Field(1, description="The job's attempt (a new one after a worker is lost).")
    retry: int = Field(0, description="In-attempt recovery retries so far (OOM, network, divergence).")
    checkpoint_dir: str | None = Field(
        None,
        description="The job's checkpoint root: this attempt saves under `a<attempt>/` here; a resume starts "
        "from the job's newest complete checkpoint across all `a*/` attempt dirs. Unset: no checkpoints.",
    )
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="Checkpoint interval; unset: about 10% of the run."
    )
