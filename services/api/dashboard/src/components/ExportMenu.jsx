// "Export as…": a verified export job (merged model, GGUF + Ollama Modelfile, GGUF LoRA) of one adapter.
// It asks POST /api/adapters/{id}/exports, follows GET /api/exports/{id} once a second (stage and progress),
// then shows what verification measured and a download per file (fetched with the key: api.js `download`).
import { useEffect, useRef, useState } from "preact/hooks";
import { api, download } from "../api.js";

const FORMATS = [
  { format: "merged", label: "Merged model (Hugging Face)" },
  { format: "gguf", label: "GGUF + Ollama Modelfile" },
  { format: "gguf-lora", label: "GGUF LoRA (llama.cpp --lora)" },
  { format: "peft", label: "PEFT adapter (.tar.gz)" },
];
const ENDED = new Set(["completed", "failed", "cancelled"]);

export function verified(v) {
  if (!v) return null;
  const lines = [];
  if (v.merged) lines.push(`merged logits within ${v.merged.max_abs_logit_diff.toExponential(1)} of the adapter's (limit ${v.merged.atol})`);
  if (v.gguf_f16) {
    const s = v.gguf_f16.samples || [];
    const n = s.reduce((total, x) => total + x.tokens_compared, 0);
    lines.push(`llama.cpp f16: same prompt as training, ${n} of ${n} greedy tokens equal`);
  }
  if (v.gguf_q8_0) lines.push("q8_0: first token equal");
  if (v.gguf_lora) lines.push("base GGUF + LoRA answers as the merged GGUF");
  if (v.peft) lines.push("the adapter's own files");
  return lines.join("; ");
}

function sizeOf(bytes) {
  return bytes >= 1e6 ? `${(bytes / 1e6).toFixed(1)} MB` : `${Math.max(1, Math.round(bytes / 1e3))} kB`;
}

export function ExportMenu({ adapterId, label = "Export as" }) {
  const [job, setJob] = useState(null);
  const [error, setError] = useState(null);
  const timer = useRef(null);

  useEffect(() => () => clearTimeout(timer.current), []);

  async function follow(id) {
    try {
      const state = await api(`/api/exports/${id}`);
      setJob(state);
      if (!ENDED.has(state.status)) timer.current = setTimeout(() => follow(id), 1000);
    } catch (e) {
      setError(e);
    }
  }

  async function start(format) {
    clearTimeout(timer.current);
    setError(null);
    try {
      const created = await api(`/api/adapters/${adapterId}/exports`, { method: "POST", body: { format } });
      setJob(created);
      follow(created.id);
    } catch (e) {
      setError(e);
    }
  }

  async function cancel() {
    try {
      await api(`/api/exports/${job.id}/cancel`, { method: "POST" });
    } catch (e) {
      setError(e);
    }
  }

  const running = job && !ENDED.has(job.status);
  return (
    <div class="export-menu" data-testid="export-menu">
      <details>
        <summary class="button" aria-label={label}>{label}…</summary>
        <ul role="menu">
          {FORMATS.map((f) => (
            <li key={f.format}>
              <button type="button" role="menuitem" disabled={running} onClick={() => start(f.format)}>
                {f.label}
              </button>
            </li>
          ))}
        </ul>
      </details>
      {job && (
        <div class="export-status" role="status" data-testid="export-status">
          <strong>{job.format}</strong>: {job.status}
          {running && ` (${job.stage || "queued"}, ${Math.round(job.progress)}%)`}
          {running && (
            <button type="button" onClick={cancel}>
              Cancel
            </button>
          )}
          {job.status === "completed" && <p class="muted">Verified: {verified(job.verification)}</p>}
          {job.status === "failed" && <p class="error">{job.error_message}</p>}
          {job.status === "completed" && (
            <ul class="export-files">
              {job.files.map((f) => (
                <li key={f.name}>
                  <a href={f.url} onClick={(e) => (e.preventDefault(), download(f.url).catch(setError))}>
                    {f.name}
                  </a>{" "}
                  <span class="muted">
                    {sizeOf(f.size)}, sha256 <code title={f.sha256}>{f.sha256.slice(0, 12)}…</code>
                  </span>
                </li>
              ))}
            </ul>
          )}
        </div>
      )}
      {error && <p class="error">{error.message}</p>}
    </div>
  );
}
