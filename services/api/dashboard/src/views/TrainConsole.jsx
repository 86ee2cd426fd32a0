// The Training Console: pick a skill, choose how hard to train, see the estimate, start.
import { useEffect, useMemo, useState } from "preact/hooks";
import { api } from "../api.js";
import { DataStatus } from "../components/DataStatus.jsx";
import { ErrorNote } from "../components/ErrorNote.jsx";
import { HelpLabel } from "../components/Help.jsx";
import { duration, money } from "../format.js";
import { navigate } from "../router.js";

const INTENSITIES = ["quick", "standard", "deep"];
const LABELS = { quick: "Quick", standard: "Standard", deep: "Deep", custom: "Custom" };
const FIELDS = ["lora_r", "lora_alpha", "lora_dropout", "learning_rate", "epochs", "batch_size"];

export const HELP = {
  intensity: "How long and how hard to train. Quick checks that everything works; Standard suits most skills; Deep trains longer for harder skills.",
  base_model: "The language model your skill is trained on top of. Smaller models train faster; larger ones answer better.",
  lora_r: "How much the adapter can learn (its rank). Higher learns more detail but is slower and can memorise your examples.",
  lora_alpha: "How strongly the adapter's changes count. Usually the same as the rank, or twice it.",
  lora_dropout: "Randomly ignores part of the adapter while training so it does not memorise. 0 is fine for most skills.",
  learning_rate: "How big each learning step is. Too high makes training unstable; too low learns slowly. 2e-4 is a good start.",
  epochs: "How many times training reads all your examples. More passes learn more but can start to parrot them.",
  batch_size: "How many examples are processed together. Lower it if you run out of memory.",
};

export function TrainConsole({ skillId, fromJob }) {
  const [skills, setSkills] = useState(null);
  const [models, setModels] = useState([]);
  const [presets, setPresets] = useState(null);
  const [advanced, setAdvanced] = useState(false);
  const [preset, setPreset] = useState("standard");
  const [baseModel, setBaseModel] = useState(null);
  const [values, setValues] = useState({});
  const [intensity, setIntensity] = useState(1);
  const [estimate, setEstimate] = useState(null);
  const [estimating, setEstimating] = useState(false);
  const [estimateError, setEstimateError] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    api("/api/skills").then((r) => setSkills(r.skills)).catch(setError);
    api("/api/models").then((r) => {
      setModels(r.models);
      setBaseModel((m) => m || (r.models.find((x) => x.default) || r.models[0]).id);
    });
    api("/api/presets").then(setPresets);
  }, []);

  const skill = skills?.find((s) => s.skill_id === skillId) || null;

  // "Adjust settings" from a failed run: start from that run's configuration.
  useEffect(() => {
    if (!fromJob) return;
    api(`/api/training-status/${fromJob}`).then((job) => {
      const c = job.config || {};
      setAdvanced(true);
      setPreset(c.preset || "custom");
      if (INTENSITIES.includes(c.preset)) setIntensity(INTENSITIES.indexOf(c.preset));
      if (c.base_model) setBaseModel(c.base_model);
      setValues(Object.fromEntries(FIELDS.filter((f) => c[f] != null).map((f) => [f, c[f]])));
    });
  }, [fromJob]);

  const presetValues = (name) => {
    const p = presets?.presets.find((x) => x.id === name);
    if (!p || !skill) return {};
    const small = skill.example_count < presets.small_skill_examples;
    return small ? p.small_skill_hyperparameters : p.hyperparameters;
  };
  const shown = { ...presetValues(preset), ...values };

  const config = useMemo(() => {
    const base = { preset, base_model: baseModel };
    if (!advanced) return base;
    return { ...base, ...Object.fromEntries(FIELDS.map((f) => [f, shown[f]]).filter(([, v]) => v != null)) };
  }, [preset, baseModel, advanced, JSON.stringify(shown)]);

  useEffect(() => {
    if (!skill || !baseModel) return;
    let live = true;
    setEstimating(true);
    const timer = setTimeout(() => {
      api(`/api/skills/${skill.skill_id}/estimate`, { method: "POST", body: { config } })
        .then((e) => live && (setEstimate(e), setEstimateError(null)))
        .catch((e) => live && (setEstimate(null), setEstimateError(e)))
        .finally(() => live && setEstimating(false));
    }, 250);
    return () => {
      live = false;
      clearTimeout(timer);
    };
  }, [skill?.skill_id, JSON.stringify(config)]);

  function choosePreset(name) {
    setPreset(name);
    setValues({});
    if (INTENSITIES.includes(name)) setIntensity(INTENSITIES.indexOf(name));
  }

  // Editing a value turns the settings into Custom, starting from what is on screen.
  function setField(field, value) {
    setValues({ ...shown, [field]: value });
    setPreset("custom");
  }

  async function start() {
    setBusy(true);
    setError(null);
    try {
      const accepted = await api(`/api/train-skill/${skill.skill_id}`, { method: "POST", body: { config } });
      navigate(`/jobs/${accepted.job_id}`);
    } catch (e) {
      setError(e);
      setBusy(false);
    }
  }

  return (
    <main>
      <div class="page-head">
        <h1>Skill Training</h1>
      </div>
      <section class="card">
        <label for="skill-picker">Select skill</label>
        <select id="skill-picker" value={skillId || ""} onChange={(e) => navigate(`/train/${e.currentTarget.value}`)}>
          <option value="" disabled>
            {skills ? "Choose a skill…" : "Loading…"}
          </option>
          {skills?.map((s) => (
            <option key={s.skill_id} value={s.skill_id}>
              {s.name} ({s.example_count} examples)
            </option>
          ))}
        </select>
        {skills && skills.length === 0 && (
          <p>
            No skills yet. <a href="#/skills/new">Create one</a> first.
          </p>
        )}
      </section>

      {skill && (
        <>
          <DataStatus
            skillId={skill.skill_id}
            baseModel={baseModel}
            actions={
              <div class="actions">
                <a class="button" href={`#/skills/${skill.skill_id}`}>
                  + Add training data
                </a>
                <a class="button" href={`#/skills/${skill.skill_id}`}>
                  View examples
                </a>
              </div>
            }
          />

          <section class="card" aria-labelledby="config-title">
            <div class="page-head">
              <h2 id="config-title">Training Configuration</h2>
              <div class="toggle" role="group" aria-label="Configuration mode">
                <button type="button" aria-pressed={!advanced} onClick={() => setAdvanced(false)}>
                  Simple
                </button>
                <button type="button" aria-pressed={advanced} onClick={() => setAdvanced(true)}>
                  Advanced
                </button>
              </div>
            </div>

            <div class="intensity">
              <HelpLabel htmlFor="intensity" text="Training intensity" help={HELP.intensity} />
              <input
                id="intensity"
                type="range"
                min="0"
                max="2"
                step="1"
                value={intensity}
                aria-valuetext={preset === "custom" ? "Custom" : LABELS[preset]}
                onInput={(e) => choosePreset(INTENSITIES[Number(e.currentTarget.value)])}
              />
              <div class="ticks" aria-hidden="true">
                {INTENSITIES.map((p) => (
                  <span key={p} class={p === preset ? "current" : ""}>
                    {LABELS[p]}
                  </span>
                ))}
              </div>
              <p class="muted small">{presets?.presets.find((p) => p.id === preset)?.description}</p>
            </div>

            {advanced && (
              <AdvancedPanel
                models={models}
                baseModel={baseModel}
                setBaseModel={setBaseModel}
                values={shown}
                setField={setField}
                preset={preset}
                choosePreset={choosePreset}
              />
            )}

            <div class="estimate" aria-live="polite" aria-busy={estimating} data-testid="estimate">
              {estimate && (
                <>
                  <p>
                    Estimated time: <strong>~{duration(estimate.seconds)}</strong>
                  </p>
                  <p>
                    Estimated cost: <strong>~{money(estimate.cost_usd)}</strong>{" "}
                    <span class="muted small">
                      ({estimate.device}, {estimate.confidence} confidence, {estimate.epochs} epoch{estimate.epochs === 1 ? "" : "s"})
                    </span>
                  </p>
                </>
              )}
              <ErrorNote error={estimateError} title="These settings cannot be used:" />
            </div>
          </section>

          <ErrorNote error={error} title="Training did not start." />
          {error?.code === "training_in_progress" && error.details?.job_id && (
            <p>
              <a href={`#/jobs/${error.details.job_id}`}>Watch the run in progress →</a>
            </p>
          )}
          <div class="start">
            <button type="button" class="primary big" onClick={start} disabled={busy || !!estimateError}>
              Start Training
            </button>
          </div>
        </>
      )}
    </main>
  );
}

function AdvancedPanel({ models, baseModel, setBaseModel, values, setField, preset, choosePreset }) {
  const select = (field, label, options, parse = Number) => (
    <div class="field">
      <HelpLabel htmlFor={`hp-${field}`} text={label} help={HELP[field]} />
      <select id={`hp-${field}`} value={String(values[field])} onChange={(e) => setField(field, parse(e.currentTarget.value))}>
        {[...new Set([...options, values[field]])]
          .filter((o) => o != null)
          .sort((a, b) => a - b)
          .map((o) => (
            <option key={o} value={String(o)}>
              {o}
            </option>
          ))}
      </select>
    </div>
  );

  return (
    <fieldset class="advanced">
      <legend>Advanced configuration</legend>
      <div class="field wide">
        <HelpLabel htmlFor="hp-base-model" text="Base model" help={HELP.base_model} helpLabel="What is the base model?" />
        <select id="hp-base-model" value={baseModel} onChange={(e) => setBaseModel(e.currentTarget.value)}>
          {models.map((m) => (
            <option key={m.id} value={m.id}>
              {m.display_name}
              {m.recommended ? " (Recommended)" : ""}
              {m.loadable_locally ? "" : " (Modal GPU)"}
            </option>
          ))}
        </select>
      </div>
      <h3>LoRA configuration</h3>
      <div class="fields">
        {select("lora_r", "Rank (r)", [4, 8, 16, 32, 64])}
        {select("lora_alpha", "Alpha", [4, 8, 16, 32, 64, 128])}
        {select("lora_dropout", "Dropout", [0, 0.05, 0.1, 0.2])}
      </div>
      <h3>Training parameters</h3>
      <div class="fields">
        <div class="field">
          <HelpLabel
            htmlFor="hp-learning_rate"
            text="Learning rate"
            help={HELP.learning_rate}
            helpLabel="What is the learning rate?"
          />
          <input
            id="hp-learning_rate"
            type="number"
            min="0.000001"
            max="0.01"
            step="any"
            value={values.learning_rate}
            onChange={(e) => setField("learning_rate", Number(e.currentTarget.value))}
          />
        </div>
        {select("epochs", "Epochs", [1, 2, 3, 4, 5, 8, 10, 12, 15, 20])}
        {select("batch_size", "Batch size", [1, 2, 4, 8, 16])}
      </div>
      <div class="presets" role="group" aria-label="Preset configurations">
        <span>Presets:</span>
        {["quick", "standard", "deep", "custom"].map((p) => (
          <button key={p} type="button" aria-pressed={preset === p} onClick={() => choosePreset(p)}>
            {p === "quick" ? "Quick Test" : p === "deep" ? "Deep Training" : LABELS[p]}
          </button>
        ))}
      </div>
    </fieldset>
  );
}
