// Fast Brain's dashboard: the shell (navigation) and the routes to each screen.
import { render } from "preact";
import "./styles.css";
import { useRoute } from "./router.js";
import { Adapters } from "./views/Adapters.jsx";
import { JobView } from "./views/JobView.jsx";
import { SkillDetail } from "./views/SkillDetail.jsx";
import { NewSkill, SkillsList } from "./views/Skills.jsx";
import { TrainConsole } from "./views/TrainConsole.jsx";

function Screen({ parts, query }) {
  const [section, id] = parts;
  if (section === "skills" && id === "new") return <NewSkill />;
  if (section === "skills" && id) return <SkillDetail skillId={id} />;
  if (section === "train") return <TrainConsole skillId={id} fromJob={query.get("from")} />;
  if (section === "jobs" && id) return <JobView jobId={id} />;
  if (section === "adapters") return <Adapters />;
  return <SkillsList />;
}

function App() {
  const route = useRoute();
  const section = route.parts[0] || "skills";
  const link = (name, label) => (
    <a href={`#/${name}`} aria-current={section === name ? "page" : undefined}>
      {label}
    </a>
  );
  return (
    <>
      <a class="skip" href="#content" onClick={(e) => (e.preventDefault(), document.getElementById("content").focus())}>
        Skip to content
      </a>
      <header class="top">
        <a class="brand" href="#/skills">
          <img src="/favicon.svg" alt="" width="24" height="24" /> Fast Brain
        </a>
        <nav aria-label="Main">
          {link("skills", "Skills")}
          {link("train", "Train")}
          {link("adapters", "Adapters")}
          <a href="/docs">API</a>
        </nav>
      </header>
      <div id="content" tabIndex={-1}>
        <Screen key={route.parts.join("/")} {...route} />
      </div>
    </>
  );
}

render(<App />, document.getElementById("app"));
