// Chatting through the OpenAI-compatible API: POST /v1/chat/completions with `stream: true`,
// read as server-sent events from fetch()'s body, each token handed over as it arrives.
// The dashboard tests greedily (temperature 0): the same question gets the same answer,
// so two versions can be compared fairly and a test can check the text.
import { ApiError, api, send } from "./api.js";

export const CHAT_MAX_TOKENS = 128;

// The `data:` payloads of a server-sent event stream (a fetch() body), one per event.
// Events end with a blank line; lines may end with \n, \r\n or \r; `:` lines are comments.
export async function* sseData(body, signal) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let data = [];
  try {
    while (true) {
      const { value, done } = await reader.read();
      if (signal?.aborted) return; // Stop: nothing that arrives after it is shown
      buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = done ? "" : lines.pop(); // the last piece may be half a line
      for (const line of lines) {
        if (line === "") {
          if (data.length) yield data.join("\n");
          data = [];
        } else if (line.startsWith("data:")) {
          data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
        } // other fields (event:, id:, retry:) and comments are not used by the API
      }
      if (done) {
        if (data.length) yield data.join("\n");
        return;
      }
    }
  } finally {
    reader.cancel().catch(() => {}); // stops the download (and so the generation) if the caller stopped early
  }
}

// Streams one answer of `model` (a skill id, `skill@vN` or a base model id) to `messages`
// ([{role, content}]). onToken(text, answerSoFar) per content delta. Resolves to
// {text, finishReason, usage, firstTokenMs, totalMs, stopped}; `stopped` when `signal` aborted it
// (the text so far is kept). A refusal or a failure during the answer rejects with an ApiError
// carrying `partial` (the text so far).
export async function streamChat({ model, messages, signal, onToken = () => {}, maxTokens = CHAT_MAX_TOKENS }) {
  const started = performance.now();
  const result = { text: "", finishReason: null, usage: null, firstTokenMs: null, totalMs: null, stopped: false };
  const finish = () => ((result.totalMs = Math.round(performance.now() - started)), result);
  const body = {
    model,
    messages,
    stream: true,
    stream_options: { include_usage: true },
    temperature: 0,
    max_tokens: maxTokens,
  };
  try {
    const response = await send("/v1/chat/completions", { method: "POST", body, signal, accept: "text/event-stream" });
    for await (const data of sseData(response.body, signal)) {
      if (data === "[DONE]") break;
      let chunk;
      try {
        chunk = JSON.parse(data);
      } catch {
        continue; // not ours to read
      }
      if (chunk.error) {
        const failed = new ApiError(502, { code: chunk.error.code || "generation_failed", ...chunk.error });
        failed.midStream = true; // the engine answered, then failed: its message says why
        throw failed;
      }
      if (chunk.usage) result.usage = chunk.usage;
      const choice = chunk.choices?.[0];
      if (!choice) continue;
      const piece = choice.delta?.content;
      if (piece) {
        if (result.firstTokenMs == null) result.firstTokenMs = Math.round(performance.now() - started);
        result.text += piece;
        onToken(piece, result.text);
      }
      if (choice.finish_reason) result.finishReason = choice.finish_reason;
    }
    if (signal?.aborted) result.stopped = true;
    return finish();
  } catch (e) {
    if (signal?.aborted) {
      result.stopped = true;
      return finish();
    }
    const error =
      e instanceof ApiError
        ? e
        : new ApiError(0, { code: "network", message: "The answer was cut off: the connection to the API dropped." });
    if (error.status === 404 && error.code === "model_not_found") {
      error.suggestions = ["Refresh the page: the version may have been deleted."];
    } else if (error.status >= 500 && !error.midStream && !error.suggestions.length) {
      error.suggestions = ["Is the inference engine (fastbrain serve) running? Try again in a moment."];
    }
    error.partial = result.text;
    throw error;
  }
}

// A skill's versions (newest first) with their held-out losses, and the base model's held-out
// loss: {versions: [{version, is_active, base_model, model, evalLoss, evalLossBefore, evalExamples, ...}]}.
// evalLoss comes from GET /v1/models (the version's held-out loss after training); the base
// model's is on each version's training job (eval_loss_before, measured on that job's held-out set).
export async function skillVersions(skillId) {
  const [{ adapters }, models] = await Promise.all([
    api(`/api/adapters?skill_id=${encodeURIComponent(skillId)}`),
    api("/v1/models").catch(() => ({ data: [] })), // the losses are extra: the versions still show
  ]);
  const byId = new Map(models.data.map((m) => [m.id, m]));
  const jobIds = [...new Set(adapters.map((a) => a.training_job_id).filter(Boolean))];
  const jobs = new Map(
    await Promise.all(
      jobIds.map((id) =>
        api(`/api/training-status/${id}?metrics_limit=0`)
          .then((job) => [id, job])
          .catch(() => [id, null]),
      ),
    ),
  );
  const versions = adapters
    .map((a) => {
      const model = `${a.skill_id}@v${a.version}`;
      const job = jobs.get(a.training_job_id) || null;
      return {
        ...a,
        model,
        evalLoss: byId.get(model)?.eval_loss ?? job?.eval_loss_after ?? null,
        evalLossBefore: job?.eval_loss_before ?? null,
        evalExamples: job?.eval_examples ?? null,
      };
    })
    .sort((x, y) => y.version - x.version);
  return { versions };
}
