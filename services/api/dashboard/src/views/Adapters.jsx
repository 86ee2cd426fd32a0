// The Adapters Gallery: every trained version, and the history of every run.
import { useEffect, useState } from "preact/hooks";
import { api } from "../api.js";
import { ConfirmDialog } from "../components/ConfirmDialog.jsx";
import { ErrorNote } from "../components/ErrorNote.jsx";
import { ExportLink } from "../components/ExportLink.jsx";
import { ExportMenu } from "../components/ExportMenu.jsx";
import { QualityStars } from "../components/Quality.jsx";
import { TestChat } from "../components/TestChat.jsx";
import { ago, dateTime, loss, money, shortDuration } from "../format.js";

const STATUS = { completed: "✓ Done", failed: "✗ Failed", cancelled: "⊘ Cancelled", running: "● Running", queued: "… Queued" };

export function Adapters() {
  const [adapters, setAdapters] = useState(null);
  const [jobs, setJobs] = useState(null);
  const [error, setError] = useState(null);
  const [testing, setTesting] = useState(null);
  const [deleting, setDeleting] = useState(null);
  const [version, setVersion] = useState(0);
  const reload = () => setVersion((v) => v + 1);

  useEffect(() => {
    api("/api/adapters").then((r) => setAdapters(r.adapters)).catch(setError);
    api("/api/training-jobs?limit=50").then((r) => setJobs(r.jobs)).catch(setError);
  }, [version]);

  async function act(promise) {
    setError(null);
    try {
      await promise;
    } catch (e) {
      setError(e);
    }
    reload();
  }

  const activate = (a) => act(api(`/api/adapters/${a.id}/activate`, { method: "POST" }));
  const remove = () => {
    const a = deleting;
    setDeleting(null);
    if (testing?.id === a.id) setTesting(null);
    act(api(`/api/adapters/${a.id}`, { method: "DELETE" }));
  };

  return (
    <main>
      <div class="page-head">
        <h1>Trained Adapters</h1>
        <div class="actions">
          <button type="button" onClick={reload}>
            ↻ Refresh
          </button>
          <a class="button primary" href="#/train">
            + New
          </a>
        </div>
      </div>
      <ErrorNote error={error} />
      {adapters && adapters.length === 0 && (
        <p>
          No adapters yet. <a href="#/train">Train a skill</a> to make one.
        </p>
      )}
      <ul class="grid" aria-label="Adapters">
        {adapters?.map((a) => (
          <li key={a.id} class={`card adapter-card${a.is_active ? " active" : ""}`} data-testid="adapter-card" data-version={a.version} data-skill={a.skill_id}>
            <h2>{a.skill_name || a.skill_id}</h2>
            <p>
              <strong>v{a.version}</strong> • {a.is_active ? <span class="ok">Active ✓</span> : <span class="muted">Inactive</span>}
            </p>
            <dl class="facts">
              <dt>Quality</dt>
              <dd>
                <QualityStars quality={a.quality} testId="adapter-quality" />
              </dd>
              <dt>Loss</dt>
              <dd>{loss(a.final_loss, 2)}</dd>
              <dt>Examples</dt>
              <dd>{a.training_examples ?? "–"}</dd>
              <dt>Trained</dt>
              <dd>
                <time datetime={a.created_at} title={new Date(a.created_at).toLocaleString()}>
                  {ago(a.created_at)}
                </time>
              </dd>
              <dt>Base model</dt>
              <dd>{a.base_model}</dd>
            </dl>
            <div class="actions">
              <button type="button" onClick={() => setTesting(testing?.id === a.id ? null : a)} aria-expanded={testing?.id === a.id}>
                Test
              </button>
              {!a.is_active && (
                <button type="button" onClick={() => activate(a)} aria-label={`Activate ${a.skill_id} v${a.version}`}>
                  Activate
                </button>
              )}
              <a class="button" href={`#/compare/${a.skill_id}?a=${a.version}`} aria-label={`Compare ${a.skill_id} v${a.version}`}>
                Compare
              </a>
              <ExportLink adapterId={a.id} label={`Export ${a.skill_id} v${a.version}`} onError={setError} />
              <ExportMenu adapterId={a.id} label={`Export ${a.skill_id} v${a.version} as`} />
              <button type="button" class="danger" onClick={() => setDeleting(a)} aria-label={`Delete ${a.skill_id} v${a.version}`}>
                Delete
              </button>
            </div>
            {testing?.id === a.id && (
              <TestChat skillId={a.skill_id} skillName={a.skill_name} adapterId={a.id} adapterVersion={a.version} />
            )}
          </li>
        ))}
      </ul>
      <ConfirmDialog
        open={!!deleting}
        title={deleting ? `Delete ${deleting.skill_name || deleting.skill_id} v${deleting.version}?` : ""}
        message="The adapter's files are removed. Its training run stays in the history. This cannot be undone."
        onConfirm={remove}
        onCancel={() => setDeleting(null)}
      />
      <section class="card" aria-labelledby="history-title">
        <h2 id="history-title">Training History</h2>
        <div class="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Date</th>
                <th scope="col">Skill</th>
                <th scope="col">Status</th>
                <th scope="col">Loss</th>
                <th scope="col">Time</th>
                <th scope="col">Cost</th>
              </tr>
            </thead>
            <tbody>
              {jobs?.map((j) => (
                <tr key={j.job_id} data-testid="history-row">
                  <td>
                    <a href={`#/jobs/${j.job_id}`}>{dateTime(j.created_at)}</a>
                  </td>
                  <td>{j.skill_name || j.skill_id}</td>
                  <td class={`status-${j.status}`}>{STATUS[j.status] || j.status}</td>
                  <td>{loss(j.final_loss, 2)}</td>
                  <td>{shortDuration(j.training_time_seconds)}</td>
                  <td>{money(j.cost_usd)}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {jobs && jobs.length === 0 && <p class="muted">No training runs yet.</p>}
        </div>
      </section>
    </main>
  );
}
