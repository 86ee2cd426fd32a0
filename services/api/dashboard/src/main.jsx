// Fast Brain's dashboard: the shell (login, navigation) and the routes to each screen.
import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import "./styles.css";
import { api } from "./api.js";
import { useRoute } from "./router.js";
import { forgetKey, onLoggedOut, storedKey, takeKeyFromAddress } from "./session.js";
import { Adapters } from "./views/Adapters.jsx";
import { Compare } from "./views/Compare.jsx";
import { JobView } from "./views/JobView.jsx";
import { Login } from "./views/Login.jsx";
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
  if (section === "compare") return <Compare skillId={id} query={query} />;
  return <SkillsList />;
}

// "checking" (a stored key, asking /api/me), "in" (me: the key's workspace and scope), "out" (reason: why).
function useLogin() {
  const [login, setLogin] = useState(() => (storedKey() ? { state: "checking" } : { state: "out" }));
  useEffect(() => onLoggedOut((reason) => setLogin({ state: "out", reason })), []);
  useEffect(() => {
    if (login.state !== "checking") return;
    api("/api/me")
      .then((me) => setLogin({ state: "in", me }))
      // A 401 has already logged out; anything else (the API is down, busy) is for each screen to report.
      .catch((e) => e.status !== 401 && setLogin({ state: "in", me: null }));
  }, [login.state]);
  return [login, setLogin];
}

function Account({ me }) {
  return (
    <div class="account">
      {me && (
        <span data-testid="account" title={`Key ${me.key_id}`}>
          <span class="visually-hidden">Workspace </span>
          {me.workspace_id} · <span class="visually-hidden">scope </span>
          {me.scope}
        </span>
      )}
      <button type="button" onClick={() => forgetKey()}>
        Log out
      </button>
    </div>
  );
}

function App() {
  const route = useRoute();
  const [login, setLogin] = useLogin();
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
        {login.state === "in" && (
          <>
            <nav aria-label="Main">
              {link("skills", "Skills")}
              {link("train", "Train")}
              {link("adapters", "Adapters")}
              {link("compare", "Compare")}
              <a href="/docs">API</a>
            </nav>
            <Account me={login.me} />
          </>
        )}
      </header>
      <div id="content" tabIndex={-1}>
        {login.state === "in" && <Screen key={route.parts.join("/")} {...route} />}
        {login.state === "out" && <Login reason={login.reason} onLogin={(me) => setLogin({ state: "in", me })} />}
        {login.state === "checking" && (
          <main>
            <p class="muted">Checking your API key…</p>
          </main>
        )}
      </div>
    </>
  );
}

takeKeyFromAddress(); // before the router reads the address: a login link's key never reaches it
render(<App />, document.getElementById("app"));
