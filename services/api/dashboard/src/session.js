// The API key this tab is logged in with. It lives in sessionStorage (this tab only, gone
// when the tab closes), never in the address bar: a login link's `#key=...` is moved here
// and replaced by `#/` before anything else runs. Fragments never reach the server.

const STORAGE = "fastbrain.apiKey";
const listeners = new Set();

export function storedKey() {
  try {
    return sessionStorage.getItem(STORAGE) || null;
  } catch {
    return null; // storage disabled: every screen shows the login form
  }
}

export function saveKey(key) {
  sessionStorage.setItem(STORAGE, key);
}

// Logs out: forgets the key and tells the shell to show the login screen, with `reason`
// (the server's message when it refused the key; none for the Log out button).
export function forgetKey(reason = null) {
  try {
    sessionStorage.removeItem(STORAGE);
  } catch {
    // nothing was stored
  }
  for (const listener of listeners) listener(reason);
}

export function onLoggedOut(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

// `./run.sh` prints `http://host:port/#key=fb_...`: keep the key, and take it out of the
// address bar and the history entry at once (replaceState, so Back never shows it either).
export function takeKeyFromAddress() {
  const hash = location.hash;
  if (!hash.startsWith("#key=")) return false;
  history.replaceState(history.state, "", `${location.pathname}${location.search}#/`);
  let key = hash.slice("#key=".length).split("&")[0];
  try {
    key = decodeURIComponent(key);
  } catch {
    // not percent-encoded after all: use it as it is
  }
  key = key.trim();
  if (key) saveKey(key);
  return Boolean(key);
}
