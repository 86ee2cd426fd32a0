// Follows a job's event stream over the WebSocket. A dropped connection is
// reopened with ?after_seq=<last seq seen>, and events at or below that seq are
// ignored, so the listener sees every event exactly once and in order.
//
// A browser cannot put the API key on a WebSocket, so every (re)connect first asks
// for a one-use ticket (POST /api/stream-tickets) and offers the subprotocols it
// returns. A socket the server refuses gets one `error` message without a seq, then a
// 44xx close: 4401 (the key no longer works: back to the login screen; or, with category
// INVALID_TICKET, the ticket lapsed before it was used: fetch another and retry), 4429 (too
// many open streams: say so and retry later), 4403, 4404 (unknown job), 4422 (bad seq).
import { api, streamUrl } from "./api.js";
import { forgetKey } from "./session.js";

const TERMINAL_STATUSES = new Set(["completed", "failed", "cancelled"]);
const CLOSE_UNAUTHORIZED = 4401;
const CLOSE_TOO_MANY = 4429;

// A job status after which nothing more happens.
export function isFinished(status) {
  return TERMINAL_STATUSES.has(status);
}

export function isTerminal(event) {
  if (event.type === "complete") return true;
  if (event.type === "error") return event.final !== false;
  return event.type === "status" && isFinished(event.status);
}

// 0.5 s, 1 s, 2 s ... at most 5 s; never sooner than the server asked (Retry-After).
export function backoff(retry, atLeastSeconds = 0) {
  return Math.max(atLeastSeconds * 1000, Math.min(5000, 250 * 2 ** Math.min(retry, 5)));
}

// onConnection(state, message): "connecting", "live", "reconnecting", "limited" (the key has
// too many streams open; message says so; retrying) or "closed" (message: why, if refused).
export function followJob(jobId, { onEvent, onConnection }) {
  let lastSeq = 0;
  let socket = null;
  let stopped = false;
  let finished = false;
  let retry = 0;
  let timer = null;

  function later(state, message, atLeastSeconds = 0) {
    retry += 1;
    onConnection(state, message);
    timer = setTimeout(open, backoff(retry, atLeastSeconds));
  }

  async function open() {
    onConnection(retry ? "reconnecting" : "connecting");
    let ticket;
    try {
      ticket = await api("/api/stream-tickets", { method: "POST" });
    } catch (error) {
      if (stopped || error.status === 401) return; // 401: api() has already shown the login screen
      if (error.status === 429) return later("limited", error.message, error.details.retry_after_seconds || 1);
      return later("reconnecting", error.message);
    }
    if (stopped) return;
    let refusal = null;
    socket = new WebSocket(streamUrl(jobId, lastSeq), ticket.protocols);
    socket.onopen = () => onConnection("live");
    socket.onmessage = (message) => {
      const event = JSON.parse(message.data);
      if (event.seq == null && event.type === "error") {
        refusal = event; // about this connection (refused, unknown job), not an event of the job
        return;
      }
      if (event.seq != null) {
        if (event.seq <= lastSeq) return;
        lastSeq = event.seq;
      }
      retry = 0; // events flow: the next drop starts the backoff afresh
      if (isTerminal(event)) finished = true;
      onEvent(event);
    };
    socket.onclose = (close) => {
      if (stopped) return;
      if (close.code === CLOSE_UNAUTHORIZED && refusal?.category === "INVALID_TICKET") {
        return later("reconnecting", refusal.message); // the key is fine: the next try gets a fresh ticket
      }
      if (close.code === CLOSE_UNAUTHORIZED) return forgetKey(refusal?.message || "Your API key was refused.");
      if (close.code === CLOSE_TOO_MANY) {
        return later("limited", refusal?.message || "Too many open streams for this key.", 5);
      }
      // 1000: the server ended the stream (the job is over); other 4xxx: it never will stream (unknown job, bad position).
      if (finished || close.code === 1000 || close.code >= 4000) return onConnection("closed", refusal?.message);
      later("reconnecting");
    };
  }

  open();
  return () => {
    stopped = true;
    clearTimeout(timer);
    socket?.close();
  };
}
