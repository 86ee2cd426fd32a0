// How long an answer took, small and muted: time to its first token and in all, and why it ended early.
import { CHAT_MAX_TOKENS } from "../chat.js";
import { millis } from "../format.js";

export function Timing({ run, prefix = null }) {
  if (!run || run.state === "streaming" || run.state === "waiting") {
    return prefix ? <div class="muted small timing">{prefix}</div> : null;
  }
  const parts = [];
  if (prefix) parts.push(prefix);
  if (run.firstTokenMs != null) parts.push(`first token ${millis(run.firstTokenMs)}`);
  if (run.totalMs != null) parts.push(`total ${millis(run.totalMs)}`);
  if (run.state === "stopped") parts.push("stopped");
  else if (run.state === "error") parts.push("✗ failed");
  else if (run.finishReason === "length") parts.push(`cut at ${CHAT_MAX_TOKENS} tokens`);
  return (
    <div class="muted small timing" data-testid="timing">
      {parts.join(" · ")}
    </div>
  );
}
