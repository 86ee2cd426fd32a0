// The one way the dashboard talks to the API: JSON in, JSON out, the tab's API key as a
// bearer token, and every failure as an ApiError carrying the API's {code, message, suggestions}.
// A 401 means the key no longer works: it is forgotten and the login screen shows the reason.
import { forgetKey, storedKey } from "./session.js";

export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `Request failed (${status})`);
    this.status = status;
    this.code = error.code || "http_error";
    this.details = error.details || {};
    this.suggestions = error.suggestions || [];
  }
}

// The response of a successful call, unread (a download, a stream); a failure throws an ApiError.
// `signal` (an AbortSignal) cancels it: then the AbortError itself is thrown, not an ApiError.
export async function send(path, { method = "GET", body, form, key, accept = "application/json", signal } = {}) {
  // `key`: try that key instead of the stored one (the login form); a 401 then only fails this call.
  const secret = key ?? storedKey();
  const init = { method, headers: { Accept: accept }, signal };
  if (secret) init.headers.Authorization = `Bearer ${secret}`;
  if (form) init.body = form;
  else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    if (signal?.aborted) throw e;
    throw new ApiError(0, { code: "network", message: "Cannot reach the Fast Brain API. Is it running?" });
  }
  if (response.ok) return response;
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  const error = new ApiError(response.status, (data && data.error) || { message: text });
  // Only the key this tab is logged in with is forgotten (not one the login form is trying,
  // nor an older key whose request was still in flight after a new login).
  if (response.status === 401 && key === undefined && storedKey() === secret) forgetKey(error.message);
  throw error;
}

export async function api(path, options = {}) {
  const text = await (await send(path, options)).text();
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

// Saves a file the API returns (an adapter's export) under the name it gives. A plain
// <a href download> cannot send the key, so the file is fetched and handed over as a blob.
export async function download(path) {
  const response = await send(path, { accept: "*/*" });
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename(response.headers.get("Content-Disposition")) || path.split("/").pop();
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// `attachment; filename="a.tar.gz"` or `attachment; filename*=utf-8''a%20b.tar.gz`.
export function filename(disposition) {
  if (!disposition) return null;
  const encoded = /filename\*\s*=\s*[^']*'[^']*'([^;]+)/i.exec(disposition);
  if (encoded) {
    try {
      return decodeURIComponent(encoded[1].trim());
    } catch {
      // fall back to the plain parameter
    }
  }
  const plain = /filename\s*=\s*("([^"]*)"|[^;]+)/i.exec(disposition);
  return plain ? (plain[2] ?? plain[1]).trim() : null;
}

export function streamUrl(jobId, afterSeq) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/api/training-stream/${jobId}?after_seq=${afterSeq}`;
}
