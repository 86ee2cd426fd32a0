// The login screen: paste an API key; it is checked with GET /api/me before it is kept.
import { useState } from "preact/hooks";
import { api } from "../api.js";
import { ErrorNote } from "../components/ErrorNote.jsx";
import { saveKey } from "../session.js";

export function Login({ reason, onLogin }) {
  const [key, setKey] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);

  async function submit(event) {
    event.preventDefault();
    const candidate = key.trim();
    if (!candidate || busy) return;
    setBusy(true);
    setError(null);
    try {
      const me = await api("/api/me", { key: candidate });
      saveKey(candidate);
      onLogin(me);
    } catch (e) {
      setError(e);
      setBusy(false);
    }
  }

  // The reason we are here (a key the server stopped accepting) until the user tries again. A
  // refused key's suggestions are for API clients (headers); the hint below says it for people.
  const refused = error?.status === 401 ? { message: error.message } : error;
  const shown = refused || (reason ? { message: reason } : null);
  return (
    <main class="login">
      <form class="card form" onSubmit={submit} aria-labelledby="login-title">
        <h1 id="login-title">Log in</h1>
        <p class="muted">Fast Brain needs an API key. The dashboard keeps it in this tab only, until you log out or close the tab.</p>
        <label for="api-key">API key</label>
        <input
          id="api-key"
          type="password"
          required
          autocomplete="off"
          spellcheck={false}
          placeholder="fb_…"
          value={key}
          aria-describedby="api-key-hint"
          onInput={(e) => setKey(e.currentTarget.value)}
        />
        <small id="api-key-hint" class="muted">
          <code>./run.sh</code> prints a login link; or create a key with{" "}
          <code>fastbrain keys create --workspace W --scope train</code>
        </small>
        <ErrorNote error={shown} title={error ? "Could not log in." : "You were logged out."} />
        <div class="actions">
          <button type="submit" class="primary" disabled={busy || !key.trim()}>
            {busy ? "Checking…" : "Log in"}
          </button>
        </div>
      </form>
    </main>
  );
}
