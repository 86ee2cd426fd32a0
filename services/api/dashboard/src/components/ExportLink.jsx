// "Export": downloads an adapter's .tar.gz. The API needs the key, which a plain
// <a href download> cannot send, so the click fetches the file (api.js `download`).
import { useState } from "preact/hooks";
import { download } from "../api.js";

export function ExportLink({ adapterId, label, onError }) {
  const [busy, setBusy] = useState(false);
  const path = `/api/adapters/${adapterId}/export`;

  async function save(event) {
    event.preventDefault();
    if (busy) return;
    setBusy(true);
    onError(null);
    try {
      await download(path);
    } catch (e) {
      onError(e);
    } finally {
      setBusy(false);
    }
  }

  return (
    <a class="button" href={path} onClick={save} aria-label={label} aria-busy={busy}>
      {busy ? "Exporting…" : "Export"}
    </a>
  );
}
