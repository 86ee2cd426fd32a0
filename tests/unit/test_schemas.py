"""Schemas and presets: what a client may send and what it resolves to."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.schemas.events import is_terminal, parse_payload
from shared.schemas.skills import SkillCreate
from shared.schemas.training import (
    PRESETS,
    SMALL_SKILL_EXAMPLES,
    SMALL_SKILL_PRESETS,
    Hyperparameters,
    Preset,
    TrainingConfigRequest,
    preset_values,
)


def test_spec_defaults_are_the_standard_preset() -> None:
    standard = PRESETS[Preset.STANDARD]
    assert (standard.lora_r, standard.lora_alpha, standard.lora_dropout) == (16, 16, 0.0)
    assert (standard.learning_rate, standard.epochs, standard.batch_size) == (2e-4, 3, 2)
    assert standard.gradient_accumulation_steps == 4
    assert standard.warmup_ratio == 0.03 and standard.lr_scheduler == "cosine"


def test_every_preset_has_values() -> None:
    for table in (PRESETS, SMALL_SKILL_PRESETS):
        assert set(table) == set(Preset)
        assert table[Preset.QUICK].epochs < table[Preset.STANDARD].epochs < table[Preset.DEEP].epochs


def test_presets_adapt_to_the_skill_size() -> None:
    """Small skills train longer and at a higher rate (docs/presets.md); 100+ examples get the spec's defaults."""
    large = TrainingConfigRequest().resolve(SMALL_SKILL_EXAMPLES)
    assert large == PRESETS[Preset.STANDARD] == TrainingConfigRequest().resolve()
    small = TrainingConfigRequest().resolve(12)
    assert small == preset_values(Preset.STANDARD, 12) == SMALL_SKILL_PRESETS[Preset.STANDARD]
    assert (small.epochs, small.learning_rate, small.gradient_accumulation_steps) == (8, 1e-3, 2)
    assert small.early_stopping_patience == 3 and large.early_stopping_patience == 0
    assert small.lora_r == large.lora_r
    assert small.epochs > large.epochs and small.learning_rate > large.learning_rate
    assert TrainingConfigRequest(preset=Preset.CUSTOM).resolve(12) == small
    # An explicit value still wins over the size-adapted preset.
    assert TrainingConfigRequest(epochs=3, learning_rate=2e-4).resolve(12).epochs == 3


def test_overrides_lay_over_the_preset() -> None:
    resolved = TrainingConfigRequest(preset=Preset.DEEP, learning_rate=5e-5, batch_size=1).resolve()
    assert resolved.learning_rate == 5e-5 and resolved.batch_size == 1
    assert resolved.lora_r == PRESETS[Preset.DEEP].lora_r
    assert resolved.epochs == PRESETS[Preset.DEEP].epochs


@pytest.mark.parametrize(
    "field,value",
    [("learning_rate", 0), ("learning_rate", 1.0), ("epochs", 0), ("lora_r", 1000), ("lora_dropout", 0.9)],
)
def test_out_of_range_values_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValidationError) as info:
        TrainingConfigRequest.model_validate({field: value})
    assert field in str(info.value)


def test_unknown_preset_and_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="preset"):
        TrainingConfigRequest.model_validate({"preset": "turbo"})
    with pytest.raises(ValidationError, match="extra"):
        TrainingConfigRequest.model_validate({"lora_rank": 8})
    with pytest.raises(ValidationError):
        Hyperparameters.model_validate({"lr_scheduler": "exponential"})


def test_skill_ids_and_turns_are_validated() -> None:
    ok = SkillCreate(skill_id="a-b_c1", name="x", system_prompt="p", conversations=[{"user": "u", "assistant": "a"}])
    assert ok.conversations[0].user == "u"
    for bad in ("Upper", "with space", "-leading", "x" * 80, ""):
        with pytest.raises(ValidationError):
            SkillCreate(skill_id=bad, name="x", system_prompt="p")
    with pytest.raises(ValidationError, match="blank"):
        SkillCreate(skill_id="s", name="x", system_prompt="p", conversations=[{"user": " ", "assistant": "a"}])
    with pytest.raises(ValidationError):
        SkillCreate(skill_id="s", name="x", system_prompt="p", conversations=[{"user": "u"}])


def test_payloads_parse_by_type() -> None:
    progress = parse_payload(
        '{"type": "progress", "step": 1, "total_steps": 2, "epoch": 0.5, "total_epochs": 1, "progress": 50}'
    )
    assert progress.type == "progress" and progress.step == 1
    assert parse_payload({"type": "log", "message": "hi"}).type == "log"
    with pytest.raises(ValidationError):
        parse_payload({"type": "progress", "step": 1})
    with pytest.raises(ValidationError):
        parse_payload({"type": "telemetry"})


def test_terminal_events() -> None:
    assert is_terminal({"type": "complete"})
    assert is_terminal({"type": "error"})
    assert not is_terminal({"type": "error", "final": False}), "a recoverable error keeps the stream open"
    assert is_terminal({"type": "status", "status": "cancelled"})
    assert not is_terminal({"type": "status", "status": "running"})
    assert not is_terminal({"type": "progress"})


def test_packing_is_automatic_unless_set() -> None:
    assert TrainingConfigRequest().resolve(12).packing is None, "unset: the trainer decides by skill size"
    assert TrainingConfigRequest(packing=False).resolve(500).packing is False
