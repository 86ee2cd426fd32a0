// Follows a job's event stream over the WebSocket. A dropped connection is
// reopened with ?after_seq=<last seq seen>, and events at or below that seq are
// ignored, so the listener sees every event exactly once and in order.
import { streamUrl } from "./api.js";

const TERMINAL_STATUSES = new Set(["completed", "failed", "cancelled"]);

// A job status after which nothing more happens.
export function isFinished(status) {
  return TERMINAL_STATUSES.has(status);
}

export function isTerminal(event) {
  if (event.type === "complete") return true;
  if (event.type === "error") return event.final !== false;
  return event.type === "status" && isFinished(event.status);
}

export function followJob(jobId, { onEvent, onConnection }) {
  let lastSeq = 0;
  let socket = null;
  let stopped = false;
  let finished = false;
  let retry = 0;
  let timer = null;

  function open() {
    onConnection(retry ? "reconnecting" : "connecting");
    socket = new WebSocket(streamUrl(jobId, lastSeq));
    socket.onopen = () => {
      retry = 0;
      onConnection("live");
    };
    socket.onmessage = (message) => {
      const event = JSON.parse(message.data);
      if (event.seq != null) {
        if (event.seq <= lastSeq) return;
        lastSeq = event.seq;
      }
      if (isTerminal(event)) finished = true;
      onEvent(event);
    };
    socket.onclose = (close) => {
      if (stopped) return;
      // 1000: the server ended the stream (the job is over); 4xxx: it never will stream (unknown job, bad position).
      if (finished || close.code === 1000 || close.code >= 4000) return onConnection("closed");
      retry += 1;
      onConnection("reconnecting");
      timer = setTimeout(open, Math.min(5000, 250 * 2 ** Math.min(retry, 5)));
    };
  }

  open();
  return () => {
    stopped = true;
    clearTimeout(timer);
    socket?.close();
  };
}
