// An adapter's quality score: 1-5 stars from its held-out improvement (shared/rules/adapter_quality.py),
// or why there is none (fewer than 10 examples: nothing was held out to measure it on).
import { stars } from "../format.js";

export function QualityStars({ quality, testId }) {
  if (!quality) return <span data-testid={testId}>–</span>;
  if (quality.stars == null)
    return (
      <span class="muted" data-testid={testId} title={quality.reason}>
        No score
      </span>
    );
  const measured =
    quality.improvement_pct != null ? `: held-out loss ${quality.improvement_pct >= 0 ? "−" : "+"}${Math.abs(quality.improvement_pct)}% on ${quality.eval_examples} examples` : "";
  return (
    <span data-testid={testId} data-stars={quality.stars} title={`${quality.label} - ${quality.meaning}${measured}`}>
      <span class="stars" role="img" aria-label={`${quality.stars} of 5 stars`}>
        {stars(quality.stars)}
      </span>{" "}
      {quality.label}
    </span>
  );
}

// "Quality: ★★★★☆ Very good - Model learned the skill's personality", as the spec's Complete view says it.
export function QualityLine({ quality }) {
  if (!quality) return null;
  if (quality.stars == null)
    return (
      <p data-testid="quality" class="muted">
        Quality: {quality.reason}
      </p>
    );
  return (
    <p data-testid="quality" data-stars={quality.stars}>
      Quality:{" "}
      <span class="stars" role="img" aria-label={`${quality.stars} of 5 stars`}>
        {stars(quality.stars)}
      </span>{" "}
      <strong>{quality.label}</strong> - {quality.meaning}
    </p>
  );
}
