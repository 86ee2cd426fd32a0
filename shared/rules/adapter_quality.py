"""An adapter's quality score: 1-5 stars from its measured held-out improvement.

The improvement is the reduction of the held-out loss (mean cross-entropy on the answers of examples
the adapter never trained on, `shared/rules/split.py`) from the base model's to the saved adapter's, in
percent of the base model's: `improvement_pct` of the job. The bands (docs/presets.md says why these):

| stars | improvement | label |
|---|---|---|
| 5 | 30% or more | Excellent |
| 4 | 15% to under 30% | Very good |
| 3 | 7% to under 15% | Good |
| 2 | 2% to under 7% | Fair |
| 1 | under 2% (or worse than the base) | Poor |

A skill with fewer than 10 examples has no held-out split, so no score: the answer says why.
Torch-free: the worker puts the score into the `complete` event, the API into job and adapter answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.rules.split import MIN_EXAMPLES_FOR_EVAL


@dataclass(frozen=True)
class Band:
    stars: int
    min_improvement_pct: float  # the lowest improvement that earns the band
    label: str
    meaning: str


BANDS = (
    Band(5, 30.0, "Excellent", "Answers unseen prompts much closer to the examples than the base model does"),
    Band(4, 15.0, "Very good", "Model learned the skill's personality"),
    Band(3, 7.0, "Good", "Learned the skill's style; more varied examples would sharpen it"),
    Band(2, 2.0, "Fair", "A small step towards the skill: add examples or train with a deeper preset"),
    Band(1, float("-inf"), "Poor", "No measurable improvement on answers it never trained on"),
)


def band_for(improvement_pct: float) -> Band:
    """The band of an improvement (in percent; negative: the adapter is worse than the base model)."""
    return next(band for band in BANDS if improvement_pct >= band.min_improvement_pct)


def quality_score(
    improvement_pct: float | None, eval_examples: int | None, training_examples: int | None = None
) -> dict[str, Any]:
    """The score of a training (`shared.schemas.events.QualityScore`): stars, label and meaning from the
    held-out improvement, or no stars and the `reason` when it was not measured."""
    score: dict[str, Any] = {
        "stars": None,
        "label": None,
        "meaning": None,
        "improvement_pct": improvement_pct,
        "eval_examples": eval_examples,
        "reason": None,
    }
    if not eval_examples:
        if training_examples is not None and training_examples < MIN_EXAMPLES_FOR_EVAL:
            score["reason"] = (
                f"No quality score: {training_examples} example{'' if training_examples == 1 else 's'} "
                f"{'is' if training_examples == 1 else 'are'} too few to hold any out for evaluation "
                f"({MIN_EXAMPLES_FOR_EVAL} or more are needed), so the improvement on unseen answers was not measured."
            )
        else:
            score["reason"] = "No quality score: no examples were held out, so the improvement was not measured."
        return score
    if improvement_pct is None:
        score["reason"] = "No quality score: the held-out loss was not measured."
        return score
    band = band_for(improvement_pct)
    score |= {"stars": band.stars, "label": band.label, "meaning": band.meaning}
    return score
