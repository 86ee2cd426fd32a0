// The "Training Data Status" box: count, tokens, quality stars, topic coverage, advice.
import { useEffect, useState } from "preact/hooks";
import { api } from "../api.js";
import { stars } from "../format.js";
import { ErrorNote } from "./ErrorNote.jsx";

export function DataStatus({ skillId, baseModel, version, actions }) {
  const [report, setReport] = useState(null);
  const [error, setError] = useState(null);

  useEffect(() => {
    if (!skillId || baseModel === null) return; // null: the caller has not chosen a model yet
    let live = true;
    setError(null);
    const query = baseModel ? `?base_model=${encodeURIComponent(baseModel)}` : "";
    api(`/api/skills/${skillId}/data-report${query}`)
      .then((r) => live && setReport(r))
      .catch((e) => live && setError(e));
    return () => {
      live = false;
    };
  }, [skillId, baseModel, version]);

  return (
    <section class="card data-status" aria-labelledby="data-status-title" aria-busy={!report && !error}>
      <h2 id="data-status-title">Training Data Status</h2>
      <ErrorNote error={error} title="Could not analyse the data." />
      {!report && !error && <p class="muted">Analysing examples…</p>}
      {report && (
        <>
          <dl class="stats">
            <div>
              <dt>Examples</dt>
              <dd data-testid="data-examples">
                {report.example_count} {report.example_count >= 10 ? "✓" : "⚠️"}
              </dd>
            </div>
            <div>
              <dt>Quality score</dt>
              <dd>
                {report.quality.label}{" "}
                <span class="stars" aria-label={`${report.quality.stars} of 5 stars`}>
                  {stars(report.quality.stars)}
                </span>
              </dd>
            </div>
            <div>
              <dt>Avg tokens</dt>
              <dd>{Math.round(report.tokens.average)}</dd>
            </div>
            <div>
              <dt>Coverage</dt>
              <dd>{report.topics.count} topics</dd>
            </div>
          </dl>
          {report.recommendations.length > 0 && (
            <ul class="recommendations">
              {report.recommendations.map((r) => (
                <li key={r}>⚠️ Recommendation: {r}</li>
              ))}
            </ul>
          )}
        </>
      )}
      {actions}
    </section>
  );
}
