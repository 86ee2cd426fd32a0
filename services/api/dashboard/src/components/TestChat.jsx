// Chat with a trained adapter (the skill's active one, or a given version): the answer streams
// in token by token from /v1/chat/completions, the conversation carries over from turn to turn,
// and Stop ends an answer where it is.
import { useEffect, useRef, useState } from "preact/hooks";
import { api } from "../api.js";
import { streamChat } from "../chat.js";
import { ErrorNote } from "./ErrorNote.jsx";
import { Timing } from "./Timing.jsx";

// The conversation so far, as the API wants it: answers that failed, or that never began, are left out.
export function history(turns) {
  return turns
    .filter((t) => t.state !== "error" && t.answer)
    .flatMap((t) => [
      { role: "user", content: t.prompt },
      { role: "assistant", content: t.answer },
    ]);
}

// An answer as shown: without the blank lines a model may start with (the conversation keeps them).
export function shown(answer) {
  return answer.trimStart();
}

export function TestChat({ skillId, skillName, adapterId, adapterVersion, suggestion = "" }) {
  const [prompt, setPrompt] = useState(suggestion);
  const [turns, setTurns] = useState([]);
  const [error, setError] = useState(null);
  // A given version is pinned (`skill@v3`): it answers even when another version is active.
  const [version, setVersion] = useState(adapterVersion ?? null);
  const controller = useRef(null);
  const input = useRef(null);
  const inputId = `chat-input-${adapterId || skillId}`;
  const busy = turns.some((t) => t.state === "streaming");
  const ready = version != null || !adapterId;

  useEffect(() => {
    if (adapterVersion != null || !adapterId) return;
    api(`/api/adapters/${adapterId}`)
      .then((a) => setVersion(a.version))
      .catch(setError);
  }, [adapterId, adapterVersion]);
  useEffect(() => () => controller.current?.abort(), []); // leaving the page stops the answer

  const update = (index, change) => setTurns((all) => all.map((t, i) => (i === index ? { ...t, ...change } : t)));

  async function send(event) {
    event.preventDefault();
    const text = prompt.trim();
    if (!text || busy || !ready) return;
    setError(null);
    const index = turns.length;
    const messages = [...history(turns), { role: "user", content: text }];
    setTurns([...turns, { prompt: text, answer: "", state: "streaming", chunks: 0, version }]);
    setPrompt("");
    const abort = new AbortController();
    controller.current = abort;
    let chunks = 0;
    try {
      const result = await streamChat({
        model: version != null ? `${skillId}@v${version}` : skillId,
        messages,
        signal: abort.signal,
        onToken: (_, answer) => update(index, { answer, chunks: ++chunks }),
      });
      update(index, { ...result, answer: result.text, state: result.stopped ? "stopped" : "done" });
    } catch (e) {
      update(index, { answer: e.partial || "", state: "error" });
      setError(e);
      setPrompt((p) => p || text); // to send again as it was
    } finally {
      if (controller.current === abort) controller.current = null;
      input.current?.focus();
    }
  }

  function restart() {
    controller.current?.abort();
    setTurns([]);
    setError(null);
    input.current?.focus();
  }

  const name = skillName || skillId;
  return (
    <section class="card chat" aria-label="Test chat">
      <h3>Test your trained skill{version != null ? ` (v${version})` : ""}</h3>
      <ol class="chat-log" aria-live="polite" aria-busy={busy ? "true" : "false"}>
        {turns.map((turn, i) => (
          <li key={i}>
            <div class="bubble you">
              <strong>You:</strong> <span class="answer">{turn.prompt}</span>
            </div>
            <div class="bubble bot" data-testid="chat-reply" data-state={turn.state} data-chunks={turn.chunks}>
              <strong>{name}:</strong>{" "}
              <span class="answer" data-testid="chat-answer">
                {shown(turn.answer)}
              </span>
              {turn.state === "streaming" && (
                <span class="typing" aria-hidden="true">
                  ▍
                </span>
              )}
              {turn.state !== "streaming" && !shown(turn.answer) && <em class="muted">(no answer)</em>}
              <Timing run={turn} prefix={turn.version != null ? `v${turn.version}` : "active version"} />
            </div>
          </li>
        ))}
      </ol>
      <form class="chat-form" onSubmit={send}>
        <label for={inputId}>Message</label>
        <input
          id={inputId}
          ref={input}
          value={prompt}
          onInput={(e) => setPrompt(e.currentTarget.value)}
          placeholder="Ask something your skill should know…"
          maxLength={4000}
          autoComplete="off"
        />
        {busy ? (
          <button type="button" class="danger" onClick={() => controller.current?.abort()}>
            <span aria-hidden="true">■</span> Stop
          </button>
        ) : (
          <button type="submit" class="primary" disabled={!prompt.trim() || !ready}>
            {turns.length ? "Send another test" : "Send"}
          </button>
        )}
      </form>
      {turns.length > 0 && !busy && (
        <div class="actions">
          <button type="button" class="link" onClick={restart}>
            New conversation
          </button>
        </div>
      )}
      <ErrorNote error={error} title={turns.length ? "The answer failed." : null} />
    </section>
  );
}
