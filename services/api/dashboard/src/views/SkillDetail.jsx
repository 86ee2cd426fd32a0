// One skill: edit it, read and add examples, import a file, see its data status.
import { useEffect, useState } from "preact/hooks";
import { api } from "../api.js";
import { ConfirmDialog } from "../components/ConfirmDialog.jsx";
import { DataStatus } from "../components/DataStatus.jsx";
import { ErrorNote } from "../components/ErrorNote.jsx";
import { navigate } from "../router.js";

export function SkillDetail({ skillId }) {
  const [skill, setSkill] = useState(null);
  const [error, setError] = useState(null);
  const [version, setVersion] = useState(0);
  const reload = () => setVersion((v) => v + 1);

  useEffect(() => {
    api(`/api/skills/${skillId}`)
      .then(setSkill)
      .catch(setError);
  }, [skillId, version]);

  if (error && !skill) return <main><ErrorNote error={error} /></main>;
  if (!skill) return <main><p class="muted">Loading…</p></main>;
  return (
    <main>
      <div class="page-head">
        <h1>{skill.name}</h1>
        <div class="actions">
          {skill.active_adapter_version != null && (
            <a class="button" href={`#/compare/${skill.skill_id}`}>
              Compare versions
            </a>
          )}
          <a class="button primary" href={`#/train/${skill.skill_id}`}>
            Train this skill
          </a>
        </div>
      </div>
      <div class="columns">
        <div>
          <SkillForm skill={skill} onSaved={reload} />
          <AddExample skillId={skillId} onAdded={reload} />
          <ImportFile skillId={skillId} onImported={reload} />
        </div>
        <div>
          <DataStatus skillId={skillId} version={version} />
          <Examples skill={skill} onChanged={reload} />
        </div>
      </div>
    </main>
  );
}

function SkillForm({ skill, onSaved }) {
  const [name, setName] = useState(skill.name);
  const [description, setDescription] = useState(skill.description || "");
  const [prompt, setPrompt] = useState(skill.system_prompt);
  const [error, setError] = useState(null);
  const [saved, setSaved] = useState(false);
  const [confirming, setConfirming] = useState(false);

  async function save(event) {
    event.preventDefault();
    setError(null);
    setSaved(false);
    try {
      const body = { name, description: description || null, system_prompt: prompt };
      await api(`/api/skills/${skill.skill_id}`, { method: "PUT", body });
      setSaved(true);
      onSaved();
    } catch (e) {
      setError(e);
    }
  }

  async function remove() {
    setConfirming(false);
    try {
      await api(`/api/skills/${skill.skill_id}`, { method: "DELETE" });
      navigate("/skills");
    } catch (e) {
      setError(e);
    }
  }

  return (
    <form class="card form" onSubmit={save} aria-labelledby="edit-title">
      <h2 id="edit-title">Skill</h2>
      <label for="edit-name">Name</label>
      <input id="edit-name" required value={name} onInput={(e) => setName(e.currentTarget.value)} />
      <label for="edit-description">Description</label>
      <input id="edit-description" value={description} onInput={(e) => setDescription(e.currentTarget.value)} />
      <label for="edit-prompt">System prompt</label>
      <textarea id="edit-prompt" required rows={5} value={prompt} onInput={(e) => setPrompt(e.currentTarget.value)} />
      <ErrorNote error={error} />
      {saved && <p role="status" class="ok">Saved.</p>}
      <div class="actions">
        <button type="button" class="danger" onClick={() => setConfirming(true)}>
          Delete skill
        </button>
        <button type="submit" class="primary">
          Save
        </button>
      </div>
      <ConfirmDialog
        open={confirming}
        title={`Delete “${skill.name}”?`}
        message="Its examples, training history and adapters are deleted too. This cannot be undone."
        onConfirm={remove}
        onCancel={() => setConfirming(false)}
      />
    </form>
  );
}

function AddExample({ skillId, onAdded }) {
  const [user, setUser] = useState("");
  const [assistant, setAssistant] = useState("");
  const [error, setError] = useState(null);

  async function add(event) {
    event.preventDefault();
    setError(null);
    try {
      await api(`/api/skills/${skillId}/examples`, { method: "POST", body: { conversations: [{ user, assistant }] } });
      setUser("");
      setAssistant("");
      onAdded();
      document.getElementById("example-user")?.focus();
    } catch (e) {
      setError(e);
    }
  }

  return (
    <form class="card form" id="add-example" onSubmit={add} aria-labelledby="add-title">
      <h2 id="add-title">+ Add training data</h2>
      <label for="example-user">User says</label>
      <textarea id="example-user" required rows={2} value={user} onInput={(e) => setUser(e.currentTarget.value)} />
      <label for="example-assistant">Skill answers</label>
      <textarea
        id="example-assistant"
        required
        rows={3}
        value={assistant}
        onInput={(e) => setAssistant(e.currentTarget.value)}
      />
      <ErrorNote error={error} />
      <div class="actions">
        <button type="submit" class="primary">
          Add example
        </button>
      </div>
    </form>
  );
}

function ImportFile({ skillId, onImported }) {
  const [result, setResult] = useState(null);
  const [error, setError] = useState(null);

  async function upload(event) {
    event.preventDefault();
    const file = event.currentTarget.elements.file.files[0];
    if (!file) return;
    setError(null);
    setResult(null);
    const form = new FormData();
    form.append("file", file);
    try {
      setResult(await api(`/api/skills/${skillId}/examples/import`, { method: "POST", form }));
      onImported();
    } catch (e) {
      setError(e);
    }
  }

  return (
    <form class="card form" onSubmit={upload} aria-labelledby="import-title">
      <h2 id="import-title">Import a file</h2>
      <label for="import-file">JSON, JSONL or CSV (HIVE215, OpenAI, ShareGPT, Alpaca)</label>
      <input id="import-file" name="file" type="file" accept=".json,.jsonl,.csv,.txt" />
      <ErrorNote error={error} title="Nothing was imported." />
      {result && (
        <p role="status" class="ok">
          Imported {result.added} examples ({result.format}); {result.skipped_duplicates} duplicates skipped.
        </p>
      )}
      <div class="actions">
        <button type="submit">Import</button>
      </div>
    </form>
  );
}

function Examples({ skill, onChanged }) {
  const [open, setOpen] = useState(skill.conversations.length <= 12);
  const [error, setError] = useState(null);

  async function remove(index) {
    setError(null);
    const conversations = skill.conversations.filter((_, i) => i !== index);
    try {
      await api(`/api/skills/${skill.skill_id}`, { method: "PUT", body: { conversations } });
      onChanged();
    } catch (e) {
      setError(e);
    }
  }

  return (
    <section class="card" id="examples" aria-labelledby="examples-title">
      <div class="page-head">
        <h2 id="examples-title">Examples ({skill.conversations.length})</h2>
        <button type="button" aria-expanded={open} aria-controls="example-list" onClick={() => setOpen(!open)}>
          {open ? "Hide examples" : "View examples"}
        </button>
      </div>
      <ErrorNote error={error} />
      {open && (
        <ol id="example-list" class="examples">
          {skill.conversations.map((c, i) => (
            <li key={i} data-testid="example">
              {c.history?.length > 0 && <p class="muted small">+ {c.history.length} earlier exchange(s)</p>}
              <p>
                <strong>User:</strong> {c.user}
              </p>
              <p>
                <strong>Skill:</strong> {c.assistant}
              </p>
              <button type="button" class="link" aria-label={`Remove example ${i + 1}`} onClick={() => remove(i)}>
                Remove
              </button>
            </li>
          ))}
        </ol>
      )}
    </section>
  );
}
