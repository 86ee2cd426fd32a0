// Chat with a trained adapter (the skill's active one, or a given version).
import { useState } from "preact/hooks";
import { api } from "../api.js";
import { ErrorNote } from "./ErrorNote.jsx";

export function TestChat({ skillId, skillName, adapterId, adapterVersion, suggestion = "" }) {
  const [prompt, setPrompt] = useState(suggestion);
  const [turns, setTurns] = useState([]);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const inputId = `chat-input-${adapterId || skillId}`;

  async function send(event) {
    event.preventDefault();
    const text = prompt.trim();
    if (!text || busy) return;
    setBusy(true);
    setError(null);
    try {
      const body = { prompt: text, max_new_tokens: 64, ...(adapterId ? { adapter_id: adapterId } : {}) };
      const reply = await api(`/api/test-adapter/${skillId}`, { method: "POST", body });
      setTurns((t) => [...t, { prompt: text, ...reply }]);
      setPrompt("");
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  }

  return (
    <section class="card chat" aria-label="Test chat">
      <h3>Test your trained skill{adapterVersion ? ` (v${adapterVersion})` : ""}</h3>
      <ol class="chat-log" aria-live="polite">
        {turns.map((turn, i) => (
          <li key={i}>
            <div class="bubble you">
              <strong>You:</strong> {turn.prompt}
            </div>
            <div class="bubble bot" data-testid="chat-reply">
              <strong>{skillName || skillId}:</strong> {turn.response || <em>(an empty answer)</em>}
              <div class="muted small">
                v{turn.adapter_version} · {turn.generation_time_ms} ms
              </div>
            </div>
          </li>
        ))}
      </ol>
      <form class="chat-form" onSubmit={send}>
        <label for={inputId}>Message</label>
        <input
          id={inputId}
          value={prompt}
          onInput={(e) => setPrompt(e.currentTarget.value)}
          placeholder="Ask something your skill should know…"
          maxLength={4000}
        />
        <button type="submit" class="primary" disabled={busy || !prompt.trim()}>
          {busy ? "Thinking…" : turns.length ? "Send another test" : "Send"}
        </button>
      </form>
      <ErrorNote error={error} />
    </section>
  );
}
