// One training run, live: progress, charts and log while it runs; then the
// completion view, the error panel, or the cancelled notice.
import { useEffect, useReducer, useRef, useState } from "preact/hooks";
import { api } from "../api.js";
import { Chart } from "../components/Chart.jsx";
import { ErrorNote } from "../components/ErrorNote.jsx";
import { ExportLink } from "../components/ExportLink.jsx";
import { ExportMenu } from "../components/ExportMenu.jsx";
import { QualityLine } from "../components/Quality.jsx";
import { TestChat } from "../components/TestChat.jsx";
import { clock, duration, loss, lossChange, money } from "../format.js";
import { navigate } from "../router.js";
import { followJob, isFinished } from "../stream.js";

const initial = { log: [], lossPoints: [], lrPoints: [], progress: null, status: null, terminal: null };

function reduce(state, event) {
  if (event.type === "reset") return initial;
  const next = { ...state };
  const line = (text, icon = "") => ({ seq: event.seq, ts: event.ts, icon, text, level: event.level });
  if (event.type === "progress") {
    next.progress = event;
    if (event.loss != null) next.lossPoints = [...state.lossPoints, [event.step, event.loss]];
    if (event.learning_rate != null) next.lrPoints = [...state.lrPoints, [event.step, event.learning_rate]];
    const text = `Step ${event.step}/${event.total_steps}: loss=${loss(event.loss)}`;
    next.log = [...state.log, line(event.loss != null ? text : `Step ${event.step}/${event.total_steps}`, "")];
  } else if (event.type === "log") {
    next.log = [...state.log, line(event.message, event.level === "warning" ? "⚠️" : event.level === "error" ? "✗" : "✓")];
  } else if (event.type === "status") {
    next.status = event.status;
    next.log = [...state.log, line(event.message || `Status: ${event.status}`, "→")];
  } else if (event.type === "complete") {
    next.status = "completed";
    next.log = [...state.log, line(`Training complete: final loss ${loss(event.final_loss)}`, "✓")];
  } else if (event.type === "error") {
    const recovering = event.final === false;
    const text = recovering ? `${event.user_message || event.message} → ${event.recovery || "retrying"}` : event.user_message || event.message;
    next.log = [...state.log, line(text, recovering ? "↻" : "✗")];
    if (!recovering) next.status = "failed";
  }
  return next;
}

export function JobView({ jobId }) {
  const [job, setJob] = useState(null);
  const [error, setError] = useState(null);
  const [state, dispatch] = useReducer(reduce, initial);
  const [connection, setConnection] = useState({ state: "connecting" });

  const refresh = () =>
    api(`/api/training-status/${jobId}`)
      .then(setJob)
      .catch(setError);

  useEffect(() => {
    dispatch({ type: "reset" });
    refresh();
    return followJob(jobId, { onEvent: dispatch, onConnection: (state, message) => setConnection({ state, message }) });
  }, [jobId]);

  // The final figures (cost, held-out loss, adapter) are on the job row: read it once the stream ends.
  // A finished job row is final: the stream's replay of its earlier statuses ("running") must not
  // take the Complete view away again (that remounted the test chat and lost what was typed).
  const status = isFinished(job?.status) ? job.status : state.status || job?.status;
  const terminal = isFinished(status);
  useEffect(() => {
    if (terminal) refresh();
  }, [terminal]);

  if (error) return <main><ErrorNote error={error} /></main>;
  if (!job) return <main><p class="muted">Loading…</p></main>;
  const done = terminal && isFinished(job.status);
  const skillName = job.skill_name || job.skill_id;

  return (
    <main data-status={done ? job.status : status}>
      {done && job.status === "completed" && <Complete job={job} skillName={skillName} onChange={refresh} />}
      {done && job.status === "failed" && <ErrorPanel job={job} />}
      {done && job.status === "cancelled" && <Cancelled job={job} />}
      {!done && <RunningHeader job={job} />}
      {/* A run that failed or was cancelled before its first step has no progress to show. */}
      {(!done || state.lossPoints.length > 0) && (
        <>
          <ProgressCard job={job} state={state} status={done ? job.status : status} connection={connection} />
          <div class="columns">
            <Chart title="Training loss" testId="loss-chart" points={state.lossPoints} color="#4f46e5" format={(v) => v.toFixed(2)} />
            <Chart title="Learning rate" testId="lr-chart" points={state.lrPoints} color="#0d9488" format={(v) => v.toExponential(0)} />
          </div>
        </>
      )}
      <Log entries={state.log} />
    </main>
  );
}

function Log({ entries }) {
  const [cleared, setCleared] = useState(0);
  const list = useRef(null);
  const shown = entries.slice(cleared);
  // Follow new lines, unless the reader has scrolled up to look at older ones.
  useEffect(() => {
    const el = list.current;
    if (el && el.scrollHeight - el.scrollTop - el.clientHeight < 80) el.scrollTop = el.scrollHeight;
  }, [entries.length]);
  return (
    <section class="card" aria-labelledby="log-title">
      <div class="page-head">
        <h2 id="log-title">Training log</h2>
        <button type="button" onClick={() => setCleared(entries.length)}>
          Clear
        </button>
      </div>
      <ol class="log" ref={list} tabIndex={0} aria-label="Training log lines" data-testid="log">
        {shown.map((entry) => (
          <li key={entry.seq} data-seq={entry.seq}>
            <time>{clock(entry.ts)}</time> <span aria-hidden="true">{entry.icon}</span> {entry.text}
          </li>
        ))}
      </ol>
    </section>
  );
}

function RunningHeader({ job }) {
  const [cancelling, setCancelling] = useState(false);
  const [error, setError] = useState(null);

  async function cancel() {
    setCancelling(true);
    try {
      await api(`/api/training-jobs/${job.job_id}/cancel`, { method: "POST" });
    } catch (e) {
      setError(e);
      setCancelling(false);
    }
  }

  return (
    <>
      <div class="page-head">
        <h1>Training: {job.skill_name || job.skill_id}</h1>
        <button type="button" class="danger" onClick={cancel} disabled={cancelling || job.cancel_requested}>
          {cancelling ? "Cancelling…" : "Cancel"}
        </button>
      </div>
      <ErrorNote error={error} />
    </>
  );
}

function ProgressCard({ job, state, status, connection }) {
  const p = state.progress;
  const percent = Math.round(status === "completed" ? 100 : (p?.progress ?? job.progress ?? 0));
  const eta = p?.eta_seconds ?? job.eta_seconds;
  const running = !isFinished(status);
  return (
    <section class="card" aria-label="Progress">
      <p>
        Status: <strong data-testid="job-status">{statusText(status)}</strong>{" "}
        {running && (
          <span class={`connection ${connection.state}`} role="status">
            {connectionText(connection)}
          </span>
        )}
      </p>
      <div class="bar" role="progressbar" aria-label="Training progress" aria-valuemin="0" aria-valuemax="100" aria-valuenow={percent}>
        <div style={{ width: `${percent}%` }} />
        <span>{percent}%</span>
      </div>
      <p class="muted" data-testid="steps">
        Step {p?.step ?? job.current_step}/{p?.total_steps ?? job.total_steps ?? "?"} • Epoch{" "}
        {Math.max(1, Math.ceil(p?.epoch ?? job.current_epoch ?? 0))}/{p?.total_epochs ?? job.total_epochs ?? "?"}
        {running && ` • ETA: ${eta != null ? duration(eta) : job.estimated_time_minutes ? `~${duration(job.estimated_time_minutes * 60)}` : "–"}`}
        {stoppedEarly(job) && " • Stopped early: the held-out loss had stopped improving"}
      </p>
    </section>
  );
}

// Early stopping (small-skill presets) ends a completed run before its planned steps; the epochs were a ceiling.
function stoppedEarly(job) {
  return job.status === "completed" && job.total_steps != null && job.current_step != null && job.current_step < job.total_steps;
}

// The stream's state beside the status: live, reconnecting, or why the server refused it.
function connectionText({ state, message }) {
  if (state === "live") return "● live";
  if (state === "reconnecting") return "○ reconnecting…";
  if (state === "limited") return `○ ${message} Retrying…`;
  return message || "";
}

function statusText(status) {
  return (
    {
      pending: "Waiting",
      queued: "Queued, waiting for a worker",
      running: "Training in progress",
      completed: "Completed",
      failed: "Failed",
      cancelled: "Cancelled",
    }[
      status
    ] || status
  );
}

function Complete({ job, skillName, onChange }) {
  const [exportError, setExportError] = useState(null);
  const heldOut = lossChange(job.eval_loss_before, job.eval_loss_after);
  const training = lossChange(job.initial_loss, job.final_loss);
  const examples = job.training_examples;
  return (
    <>
      <h1>Training Complete: {skillName}</h1>
      {job.activated === false && <NotActivated job={job} onChange={onChange} />}
      <section class="card banner success" data-testid="complete">
        <h2>Success!</h2>
        <dl class="stats">
          <div>
            <dt>Final loss</dt>
            <dd>{loss(job.final_loss)}</dd>
          </div>
          <div>
            <dt>Training time</dt>
            <dd>{duration(job.training_time_seconds)}</dd>
          </div>
          <div>
            <dt>Examples</dt>
            <dd>{examples ?? "–"}</dd>
          </div>
          <div>
            <dt>Cost</dt>
            <dd>{money(job.cost_usd)}</dd>
          </div>
        </dl>
        <div class="improvement">
          {heldOut && (
            <p data-testid="improvement">
              Improvement: {heldOut} on {job.eval_examples} held-out examples the adapter never trained on
            </p>
          )}
          <QualityLine quality={job.quality} />
          <KeptStep job={job} />
          {training && <p>{heldOut ? "Training loss: " : "Improvement: "}{training}</p>}
        </div>
      </section>
      {job.evaluation?.samples?.length > 0 && <SideBySide evaluation={job.evaluation} />}
      {job.adapter_id && <TestChat skillId={job.skill_id} skillName={skillName} adapterId={job.adapter_id} />}
      <div class="actions card">
        <a class="button" href={`#/train/${job.skill_id}`}>
          Train Again
        </a>
        {job.adapter_id && (
          <a class="button" href={`#/compare/${job.skill_id}`}>
            Compare with the base model
          </a>
        )}
        {job.adapter_id && <ExportLink adapterId={job.adapter_id} onError={setExportError} />}
        {job.adapter_id && <ExportMenu adapterId={job.adapter_id} />}
        <a class="button" href="#/skills">
          Back to Skills
        </a>
      </div>
      <ErrorNote error={exportError} title="Could not export the adapter." />
    </>
  );
}

// Which step's weights the adapter holds: the lowest held-out loss measured (about every 10% of the steps).
function KeptStep({ job }) {
  if (job.best_step == null || job.best_eval_loss == null) return null;
  const total = job.total_steps ? ` of ${job.total_steps}` : "";
  return (
    <p data-testid="kept-step">
      {job.restored_best
        ? `Kept the weights of step ${job.best_step}${total}: held-out loss ${loss(job.best_eval_loss)} (the last step had ${loss(job.last_eval_loss)}).`
        : `Kept the weights of the last step (${job.best_step}${total}): held-out loss ${loss(job.best_eval_loss)}, the best measured.`}
    </p>
  );
}

// The regression gate kept this version but did not activate it: say why, and let the user activate it anyway.
function NotActivated({ job, onChange }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const check = job.regression_check || {};
  const version = job.adapter_version != null ? `v${job.adapter_version}` : "This version";

  async function activate() {
    setBusy(true);
    setError(null);
    try {
      await api(`/api/adapters/${job.adapter_id}/activate`, { method: "POST" });
      await onChange();
    } catch (e) {
      setError(e);
    }
    setBusy(false);
  }

  if (job.adapter_active)
    return (
      <section class="card banner" role="status" data-testid="not-activated">
        <p>
          {version} is active now: it was activated by hand after the regression gate kept it back.
        </p>
      </section>
    );
  return (
    <section class="card banner failure" role="alert" data-testid="not-activated">
      <h2>⚠️ {version} is saved, but it is not the active version</h2>
      <p>{job.not_activated_reason || "Its held-out loss is worse than the active version's."}</p>
      {check.active_eval_loss != null && check.eval_loss != null && (
        <p class="muted small">
          Held-out loss on the same {check.eval_examples} examples: {version} {loss(check.eval_loss, 4)}, active v{check.active_version}{" "}
          {loss(check.active_eval_loss, 4)} (lower is better). The active version keeps answering until you choose.
        </p>
      )}
      <ErrorNote error={error} title="Could not activate it." />
      <div class="actions">
        <button type="button" class="primary" onClick={activate} disabled={busy || !job.adapter_id}>
          {busy ? "Activating…" : `Activate ${version} anyway`}
        </button>
        {job.adapter_id && (
          <a class="button" href={`#/compare/${job.skill_id}?a=${job.adapter_version ?? ""}`}>
            Compare the versions
          </a>
        )}
      </div>
    </section>
  );
}

// Held-out prompts (never trained on): the example's own answer, the base model's and the adapter's.
function SideBySide({ evaluation }) {
  const answer = (text) => (text ? text : <span class="muted">(no answer: it stopped at once)</span>);
  return (
    <section class="card" aria-labelledby="side-by-side-title" data-testid="side-by-side">
      <h2 id="side-by-side-title">Held-out prompts, side by side</h2>
      <p class="muted small">
        {evaluation.samples.length} prompt{evaluation.samples.length === 1 ? "" : "s"} the adapter never trained on, answered {evaluation.decoding || "greedy"} (up to{" "}
        {evaluation.max_new_tokens} tokens){evaluation.step != null ? ` with the weights of step ${evaluation.step}` : ""}.
      </p>
      <div class="table-wrap">
        <table class="side-by-side">
          <thead>
            <tr>
              <th scope="col">Reference answer</th>
              <th scope="col">Base model</th>
              <th scope="col">Adapter</th>
            </tr>
          </thead>
          {evaluation.samples.map((s, i) => (
            <tbody key={i} data-testid="evaluation-sample">
              <tr>
                <th scope="rowgroup" colSpan={3} class="prompt">
                  <span class="muted">You:</span> {s.prompt}
                </th>
              </tr>
              <tr data-testid="evaluation-row">
                <td data-label="Reference answer">{s.reference}</td>
                <td data-label="Base model">{answer(s.base)}</td>
                <td data-label="Adapter">{answer(s.adapter)}</td>
              </tr>
            </tbody>
          ))}
        </table>
      </div>
    </section>
  );
}

function ErrorPanel({ job }) {
  const details = job.error_details || {};
  const attempts = job.recovery_attempts || details.attempts || [];
  const [error, setError] = useState(null);

  async function retry() {
    setError(null);
    try {
      const accepted = await api(`/api/train-skill/${job.skill_id}`, { method: "POST", body: { config: job.config } });
      navigate(`/jobs/${accepted.job_id}`);
    } catch (e) {
      setError(e);
    }
  }

  return (
    <>
      <h1>Training: {job.skill_name || job.skill_id}</h1>
      <section class="card banner failure" role="alert" data-testid="error-panel">
        <h2>⚠️ Training issue detected</h2>
        <h3>What happened</h3>
        <p>{details.user_message || job.error_message}</p>
        {details.message && <p class="muted small">Details: {details.message}</p>}
        <h3>What we tried</h3>
        {attempts.length === 0 ? (
          <p>Nothing automatic: this kind of problem needs a change from you.</p>
        ) : (
          <ul class="attempts">
            {attempts.map((a, i) => (
              <li key={i}>
                {a.succeeded ? "✓" : "✗"} {a.message}
              </li>
            ))}
          </ul>
        )}
        <h3>Recommended actions</h3>
        <ul>
          {(details.suggestions || []).map((s) => (
            <li key={s}>{s}</li>
          ))}
        </ul>
        <ErrorNote error={error} title="Could not retry." />
        <div class="actions">
          <button type="button" class="primary" onClick={retry}>
            Retry
          </button>
          <a class="button" href={`#/train/${job.skill_id}?from=${job.job_id}`}>
            Adjust Settings
          </a>
          <a class="button" href="#/skills">
            Back to Skills
          </a>
        </div>
      </section>
    </>
  );
}

function Cancelled({ job }) {
  return (
    <>
      <h1>Training: {job.skill_name || job.skill_id}</h1>
      <section class="card banner" data-testid="cancelled">
        <h2>Training cancelled</h2>
        <p>No adapter was saved. {job.error_details?.suggestions?.[0] || ""}</p>
        <div class="actions">
          <a class="button primary" href={`#/train/${job.skill_id}`}>
            Train Again
          </a>
          <a class="button" href="#/skills">
            Back to Skills
          </a>
        </div>
      </section>
    </>
  );
}
