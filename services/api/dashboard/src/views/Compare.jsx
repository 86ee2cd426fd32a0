// Compare: one prompt, three answers streaming side by side — the base model the skill was
// trained on, and two of its versions — each under its held-out loss (lower is better).
// `#/compare/{skill_id}?a=2&b=1` (the versions; default: the active one against the newest other).
import { useEffect, useRef, useState } from "preact/hooks";
import { api } from "../api.js";
import { skillVersions, streamChat } from "../chat.js";
import { ErrorNote } from "../components/ErrorNote.jsx";
import { shown } from "../components/TestChat.jsx";
import { Timing } from "../components/Timing.jsx";
import { loss } from "../format.js";
import { navigate } from "../router.js";

// Version A: the one asked for, else the active one, else the newest. B: the one asked for, else
// the newest other than A, else A again (a skill with one version).
export function defaultPair(versions, askedA, askedB) {
  const has = (v) => versions.some((x) => x.version === v);
  const a = has(askedA) ? askedA : (versions.find((x) => x.is_active) || versions[0])?.version;
  const b = has(askedB) ? askedB : (versions.find((x) => x.version !== a) || versions[0])?.version;
  return [a ?? null, b ?? null];
}

function number(text) {
  const n = Number.parseInt(text || "", 10);
  return Number.isFinite(n) ? n : null;
}

export function Compare({ skillId, query }) {
  const [skills, setSkills] = useState(null); // [{skill_id, name}] with at least one version
  const [skill, setSkill] = useState(null);
  const [versions, setVersions] = useState(null);
  const [pair, setPair] = useState([null, null]);
  const [prompt, setPrompt] = useState("");
  const [runs, setRuns] = useState({});
  const [error, setError] = useState(null);
  const controller = useRef(null);

  useEffect(() => {
    api("/api/adapters")
      .then(({ adapters }) => {
        const seen = new Map();
        for (const a of adapters) if (!seen.has(a.skill_id)) seen.set(a.skill_id, { skill_id: a.skill_id, name: a.skill_name || a.skill_id });
        setSkills([...seen.values()].sort((x, y) => x.name.localeCompare(y.name)));
      })
      .catch(setError);
  }, []);

  useEffect(() => {
    if (!skillId) return;
    api(`/api/skills/${skillId}`).then(setSkill).catch(setError);
    skillVersions(skillId)
      .then((found) => {
        setVersions(found.versions);
        setPair(defaultPair(found.versions, number(query.get("a")), number(query.get("b"))));
      })
      .catch(setError);
  }, [skillId]);
  useEffect(() => () => controller.current?.abort(), []);

  const byVersion = (v) => versions?.find((x) => x.version === v) || null;
  const [a, b] = [byVersion(pair[0]), byVersion(pair[1])];
  const busy = Object.values(runs).some((r) => r?.state === "streaming");

  function choose(which, value) {
    const next = which === "a" ? [Number(value), pair[1]] : [pair[0], Number(value)];
    setPair(next);
    setRuns(({ [which]: _, ...others }) => others);
    // Shareable, without a new history entry or a reload of the screen.
    history.replaceState(history.state, "", `#/compare/${skillId}?a=${next[0]}&b=${next[1]}`);
  }

  const columns = a && b
    ? [
        {
          key: "base",
          title: "Base model",
          model: a.base_model,
          loss: a.evalLossBefore,
          lossNote: a.evalLossBefore != null ? `before training, on v${a.version}'s ${a.evalExamples ?? ""} held-out examples` : null,
        },
        { key: "a", title: "Version A", version: a, model: a.model, loss: a.evalLoss, lossNote: heldOutNote(a) },
        { key: "b", title: "Version B", version: b, model: b.model, loss: b.evalLoss, lossNote: heldOutNote(b) },
      ]
    : [];

  async function run(event) {
    event.preventDefault();
    const text = prompt.trim();
    if (!text || busy || !columns.length) return;
    controller.current?.abort();
    const abort = new AbortController();
    controller.current = abort;
    setError(null);
    // The same system prompt for all three: the versions get the skill's by default, the base model none.
    const messages = [...(skill?.system_prompt ? [{ role: "system", content: skill.system_prompt }] : []), { role: "user", content: text }];
    const fresh = {};
    for (const c of columns) fresh[c.key] = { state: "streaming", text: "", chunks: 0, model: c.model };
    setRuns(fresh);
    const put = (key, change) => setRuns((all) => ({ ...all, [key]: { ...all[key], ...change } }));
    await Promise.all(
      columns.map(async (c) => {
        let chunks = 0;
        try {
          const result = await streamChat({
            model: c.model,
            messages,
            signal: abort.signal,
            onToken: (_, answer) => put(c.key, { text: answer, chunks: ++chunks }),
          });
          put(c.key, { ...result, state: result.stopped ? "stopped" : "done" });
        } catch (e) {
          put(c.key, { text: e.partial || "", state: "error", error: e });
        }
      }),
    );
    if (controller.current === abort) controller.current = null;
  }

  return (
    <main class="compare">
      <div class="page-head">
        <h1>Compare{skill ? `: ${skill.name}` : ""}</h1>
        {skills?.length > 0 && (
          <div class="field inline">
            <label for="compare-skill">Skill</label>
            <select id="compare-skill" value={skillId || ""} onChange={(e) => navigate(`/compare/${e.currentTarget.value}`)}>
              {!skillId && <option value="">Choose a skill…</option>}
              {skills.map((s) => (
                <option key={s.skill_id} value={s.skill_id}>
                  {s.name}
                </option>
              ))}
            </select>
          </div>
        )}
      </div>
      <ErrorNote error={error} />
      {skills?.length === 0 && (
        <p>
          Nothing to compare yet. <a href="#/train">Train a skill</a> first.
        </p>
      )}
      {!skillId && skills?.length > 0 && <p class="muted">Choose a skill to compare its base model and two of its versions.</p>}
      {skillId && versions?.length === 0 && (
        <p>
          This skill has no trained version yet. <a href={`#/train/${skillId}`}>Train it</a> first.
        </p>
      )}
      {skillId && !versions && !error && <p class="muted">Loading…</p>}
      {columns.length > 0 && (
        <>
          <form class="card form compare-form" onSubmit={run}>
            <label for="compare-prompt">Prompt</label>
            <textarea
              id="compare-prompt"
              rows={2}
              value={prompt}
              maxLength={4000}
              placeholder="Ask something your skill should know…"
              onInput={(e) => setPrompt(e.currentTarget.value)}
              onKeyDown={(e) => e.key === "Enter" && !e.shiftKey && (e.preventDefault(), e.currentTarget.form.requestSubmit())}
              aria-describedby="compare-hint"
            />
            <p id="compare-hint" class="muted small">
              Enter sends it to all three at once; Shift+Enter starts a new line. Each gets the skill's system prompt and answers
              greedily (temperature 0), so the same prompt always gets the same answers.
            </p>
            <div class="actions">
              {busy ? (
                <button type="button" class="danger" onClick={() => controller.current?.abort()}>
                  <span aria-hidden="true">■</span> Stop
                </button>
              ) : (
                <button type="submit" class="primary" disabled={!prompt.trim()}>
                  Compare
                </button>
              )}
            </div>
          </form>
          <div class="compare-grid" aria-busy={busy ? "true" : "false"}>
            {columns.map((c) => (
              <Column key={c.key} column={c} run={runs[c.key]} versions={versions} busy={busy} onChoose={(v) => choose(c.key, v)} />
            ))}
          </div>
          <p class="muted small">
            Held-out loss: how well each model predicts the skill's held-out examples, which no version trained on (lower is better).
            {a.evalLossBefore != null && b.evalLossBefore != null && a.evalLossBefore !== b.evalLossBefore &&
              ` v${a.version} and v${b.version} were measured on different held-out sets (the examples changed between them).`}
          </p>
        </>
      )}
    </main>
  );
}

function heldOutNote(version) {
  if (version.evalLoss == null) return "none: it had too few examples to hold some out";
  return version.evalExamples ? `on its ${version.evalExamples} held-out examples` : null;
}

function Column({ column, run, versions, busy, onChoose }) {
  const id = `compare-${column.key}`;
  return (
    <section class="card compare-column" aria-labelledby={`${id}-title`} data-testid={`column-${column.key}`}>
      <header>
        <h2 id={`${id}-title`}>{column.title}</h2>
        {column.version ? (
          <>
            <label for={`${id}-version`} class="visually-hidden">
              {column.title}
            </label>
            <select id={`${id}-version`} value={column.version.version} disabled={busy} onChange={(e) => onChoose(e.currentTarget.value)}>
              {versions.map((v) => (
                <option key={v.version} value={v.version}>
                  v{v.version}
                  {v.is_active ? " (active)" : ""}
                </option>
              ))}
            </select>
          </>
        ) : null}
        <p class="small model-id">
          <code>{column.model}</code>
        </p>
        <p class="held-out" data-testid="held-out-loss" data-loss={column.loss ?? ""}>
          <span class="muted small">Held-out loss</span> <strong>{loss(column.loss)}</strong>
          {column.lossNote && <span class="muted small"> {column.lossNote}</span>}
        </p>
      </header>
      <div class="compare-answer" aria-live="polite" aria-busy={run?.state === "streaming" ? "true" : "false"}>
        {!run && <p class="muted small">Its answer appears here.</p>}
        {run && (
          <p data-testid="compare-answer" data-state={run.state} data-chunks={run.chunks}>
            <span class="answer">{shown(run.text)}</span>
            {run.state === "streaming" && (
              <span class="typing" aria-hidden="true">
                ▍
              </span>
            )}
            {run.state !== "streaming" && !shown(run.text) && <em class="muted">(no answer)</em>}
          </p>
        )}
        <Timing run={run} />
        {run?.error && <ErrorNote error={run.error} />}
      </div>
    </section>
  );
}
