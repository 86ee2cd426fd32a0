"""`fastbrain chat SKILL`: talk to a trained skill through POST /v1/chat/completions, streamed (SSE)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import typer

from services.cli.client import EXIT_FAILED, Api, CliError, error_from_response
from services.cli.context import api
from services.cli.output import err, out, print_error

# A first token can wait on the engine loading its base model.
CHAT_SECONDS = 300.0


def sse_chunks(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The JSON payloads of an OpenAI-style SSE stream, up to `data: [DONE]`."""
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        chunk = json.loads(data)
        if isinstance(chunk, dict) and isinstance(chunk.get("error"), dict):
            raise CliError(str(chunk["error"].get("message") or "the stream failed"))  # failed after it began
        yield chunk


def stream_answer(client: Api, body: dict[str, Any]) -> str:
    """Print the answer as it arrives; return all of it (for the conversation's history)."""
    parts: list[str] = []
    try:
        with client.http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
            if response.status_code >= 400:
                response.read()
                raise error_from_response(response)
            for chunk in sse_chunks(response):
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        parts.append(text)
                        out.print(text, end="", markup=False)
                        out.file.flush()
    except httpx.TimeoutException as exc:
        raise CliError(f"no answer in time ({exc}).") from exc
    except httpx.HTTPError as exc:
        raise client.unreachable(exc) from exc
    out.print()
    return "".join(parts)


def chat(
    ctx: typer.Context,
    skill: Annotated[str, typer.Argument(metavar="SKILL", help="A skill id, SKILL@vN, or a base model id.")],
    message: Annotated[str | None, typer.Option("--message", "-m", help="Ask once, print the answer, exit.")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, max=4096)] = 256,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0)] = 0.7,
) -> None:
    """Chat with a skill's active adapter (streamed). Ctrl-C or Ctrl-D ends the chat."""
    client = api(ctx, timeout=CHAT_SECONDS)
    settings = {"model": skill, "max_tokens": max_tokens, "temperature": temperature}
    if message is not None:
        stream_answer(client, {**settings, "messages": [{"role": "user", "content": message}]})
        return
    history: list[dict[str, str]] = []
    err.print(f"Chatting with '{skill}'. Ctrl-C or Ctrl-D to end.", style="dim", markup=False)
    try:
        while True:
            text = input("you> ").strip()
            if not text:
                continue
            out.print("bot> ", end="", style="bold", markup=False)
            try:
                answer = stream_answer(client, {**settings, "messages": [*history, {"role": "user", "content": text}]})
            except CliError as error:
                if error.exit_code != EXIT_FAILED:
                    raise  # the server is gone or refuses the key: no point asking again
                out.print()
                print_error(error)  # this question failed; the chat goes on
                continue
            history += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
    except (KeyboardInterrupt, EOFError):
        out.print()
