"""The quality score's bands (shared/rules/adapter_quality.py), as docs/presets.md documents them."""

from __future__ import annotations

import pytest

from shared.rules.adapter_quality import BANDS, band_for, quality_score
from shared.schemas.events import QualityScore


@pytest.mark.parametrize(
    ("improvement", "stars", "label"),
    [
        (-12.0, 1, "Poor"),  # worse than the base model
        (0.0, 1, "Poor"),
        (1.99, 1, "Poor"),
        (2.0, 2, "Fair"),
        (6.99, 2, "Fair"),
        (7.0, 3, "Good"),
        (12.0, 3, "Good"),  # the demo skill on smollm2 with the Standard preset (docs/presets.md)
        (15.0, 4, "Very good"),
        (29.99, 4, "Very good"),
        (30.0, 5, "Excellent"),
        (45.0, 5, "Excellent"),
    ],
)
def test_bands(improvement: float, stars: int, label: str) -> None:
    score = quality_score(improvement, 5, 24)
    assert (score["stars"], score["label"]) == (stars, label)
    assert score["meaning"] == band_for(improvement).meaning and score["reason"] is None
    assert score["improvement_pct"] == improvement and score["eval_examples"] == 5
    QualityScore.model_validate(score)


def test_bands_cover_every_improvement_once_in_order() -> None:
    assert [b.stars for b in BANDS] == [5, 4, 3, 2, 1]
    floors = [b.min_improvement_pct for b in BANDS]
    assert floors == sorted(floors, reverse=True) and floors[-1] == float("-inf")


def test_no_held_out_split_no_score_and_why() -> None:
    score = quality_score(None, 0, 9)
    assert score["stars"] is None and score["label"] is None
    assert score["reason"] == (
        "No quality score: 9 examples are too few to hold any out for evaluation (10 or more are needed), "
        "so the improvement on unseen answers was not measured."
    )
    assert "1 example is too few" in quality_score(None, 0, 1)["reason"]
    assert quality_score(None, None, None)["reason"].startswith("No quality score: no examples were held out")
    assert quality_score(None, 3, 12)["reason"] == "No quality score: the held-out loss was not measured."
    QualityScore.model_validate(score)
