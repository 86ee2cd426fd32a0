// Skills: the list, and the form that creates one.
import { useEffect, useState } from "preact/hooks";
import { api } from "../api.js";
import { ErrorNote } from "../components/ErrorNote.jsx";
import { ago } from "../format.js";
import { navigate } from "../router.js";

export function slugify(name) {
  return name
    .toLowerCase()
    .normalize("NFKD")
    .replace(/[^a-z0-9]+/g, "-")
    .replace(/^-+|-+$/g, "")
    .slice(0, 63);
}

export function SkillsList() {
  const [skills, setSkills] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    api("/api/skills")
      .then((r) => setSkills(r.skills))
      .catch(setError);
  }, []);

  return (
    <main>
      <div class="page-head">
        <h1>Skills</h1>
        <a class="button primary" href="#/skills/new">
          + New skill
        </a>
      </div>
      <p class="muted">A skill is a system prompt plus example conversations. Train it into an adapter, then chat with it.</p>
      <ErrorNote error={error} />
      {skills && skills.length === 0 && <p>No skills yet. Create one to get started.</p>}
      {skills && skills.length > 0 && (
        <ul class="grid" aria-label="Skills">
          {skills.map((s) => (
            <li key={s.skill_id} class="card skill-card">
              <h2>
                <a href={`#/skills/${s.skill_id}`}>{s.name}</a>
              </h2>
              <p class="muted small">{s.skill_id}</p>
              {s.description && <p>{s.description}</p>}
              <p>
                {s.example_count} examples ·{" "}
                {s.active_adapter_version ? `adapter v${s.active_adapter_version} active` : "not trained yet"} · updated{" "}
                {ago(s.updated_at)}
              </p>
              <div class="actions">
                <a class="button" href={`#/skills/${s.skill_id}`}>
                  Edit
                </a>
                <a class="button primary" href={`#/train/${s.skill_id}`}>
                  Train
                </a>
              </div>
            </li>
          ))}
        </ul>
      )}
    </main>
  );
}

export function NewSkill() {
  const [name, setName] = useState("");
  const [skillId, setSkillId] = useState("");
  const [idTouched, setIdTouched] = useState(false);
  const [systemPrompt, setSystemPrompt] = useState("");
  const [description, setDescription] = useState("");
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const id = idTouched ? skillId : slugify(name);

  async function create(event) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const body = { skill_id: id, name, system_prompt: systemPrompt, description: description || null };
      await api("/api/skills", { method: "POST", body });
      navigate(`/skills/${id}`);
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  }

  return (
    <main>
      <h1>New skill</h1>
      <form class="card form" onSubmit={create}>
        <label for="skill-name">Name</label>
        <input id="skill-name" required maxLength={200} value={name} onInput={(e) => setName(e.currentTarget.value)} />
        <label for="skill-id">Skill ID</label>
        <input
          id="skill-id"
          required
          pattern="[a-z0-9][a-z0-9_\-]{0,62}"
          value={id}
          aria-describedby="skill-id-hint"
          onInput={(e) => {
            setIdTouched(true);
            setSkillId(e.currentTarget.value);
          }}
        />
        <small id="skill-id-hint" class="muted">
          Lowercase letters, digits, - and _. Used in URLs and the API.
        </small>
        <label for="skill-description">Description (optional)</label>
        <input id="skill-description" value={description} onInput={(e) => setDescription(e.currentTarget.value)} />
        <label for="skill-prompt">System prompt</label>
        <textarea
          id="skill-prompt"
          required
          rows={5}
          value={systemPrompt}
          placeholder="You are … Answer in the voice of …"
          onInput={(e) => setSystemPrompt(e.currentTarget.value)}
        />
        <ErrorNote error={error} title="Could not create the skill." />
        <div class="actions">
          <a class="button" href="#/skills">
            Cancel
          </a>
          <button type="submit" class="primary" disabled={busy}>
            Create skill
          </button>
        </div>
      </form>
    </main>
  );
}
