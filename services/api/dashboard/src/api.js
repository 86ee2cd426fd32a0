// The one way the dashboard talks to the API: JSON in, JSON out, and every
// failure as an ApiError carrying the API's {code, message, suggestions}.

export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `Request failed (${status})`);
    this.status = status;
    this.code = error.code || "http_error";
    this.details = error.details || {};
    this.suggestions = error.suggestions || [];
  }
}

export async function api(path, { method = "GET", body, form } = {}) {
  const init = { method, headers: { Accept: "application/json" } };
  if (form) init.body = form;
  else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, { code: "network", message: "Cannot reach the Fast Brain API. Is it running?" });
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) throw new ApiError(response.status, (data && data.error) || { message: text });
  return data;
}

export function streamUrl(jobId, afterSeq) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/api/training-stream/${jobId}?after_seq=${afterSeq}`;
}
