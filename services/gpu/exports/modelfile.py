"""An Ollama Modelfile for a GGUF export: FROM, a TEMPLATE equal to the chat template, stop, SYSTEM.

Ollama templates are Go templates, chat templates Jinja: no general translation exists. A chat
template is probed instead: a conversation of unique markers is rendered with it and cut into
each role's prefix and suffix and the generation prompt. The Go template is built from those
pieces, and the same pieces, assembled the way that Go template assembles them, must reproduce
the Jinja rendering of a multi-turn probe and of the skill's prompt exactly; a template whose
turns do not decompose so (one that moves the system prompt into a user turn, say) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.rules.templates import ChatTokenizer, Message

_SYS, _U1, _A1, _U2, _A2, _U3 = (f"FBPROBE{i}X" for i in range(6))


class TemplateNotTranslatable(ValueError):
    """The chat template does not decompose into per-role prefixes and suffixes."""


@dataclass(frozen=True)
class Pieces:
    system_prefix: str
    system_suffix: str
    user_prefix: str
    user_suffix: str
    assistant_prefix: str  # also the generation prompt
    assistant_suffix: str

    def render(self, system: str, messages: list[Message]) -> str:
        """What the Go template below renders for these messages (Ollama's `.System` and `.Messages`)."""
        out = f"{self.system_prefix}{system}{self.system_suffix}" if system else ""
        for message in messages:
            if message["role"] == "user":
                out += f"{self.user_prefix}{message['content']}{self.user_suffix}"
            elif message["role"] == "assistant":
                out += f"{self.assistant_prefix}{message['content']}{self.assistant_suffix}"
        return out + self.assistant_prefix

    def go_template(self) -> str:
        # No `{{-` trims: the pieces' own newlines are part of the format.
        return (
            f"{{{{ if .System }}}}{self.system_prefix}{{{{ .System }}}}{self.system_suffix}{{{{ end }}}}"
            f'{{{{ range .Messages }}}}{{{{ if eq .Role "user" }}}}'
            f"{self.user_prefix}{{{{ .Content }}}}{self.user_suffix}"
            f'{{{{ else if eq .Role "assistant" }}}}{self.assistant_prefix}{{{{ .Content }}}}{self.assistant_suffix}'
            f"{{{{ end }}}}{{{{ end }}}}{self.assistant_prefix}"
        )


def _between(text: str, start: str, end: str) -> str:
    i = text.index(start) + len(start)
    return text[i : text.index(end, i)]


def probe(chat: ChatTokenizer) -> Pieces:
    """The template's per-role pieces, checked to reproduce it."""
    full = chat.render(
        [
            {"role": "system", "content": _SYS},
            {"role": "user", "content": _U1},
            {"role": "assistant", "content": _A1},
            {"role": "user", "content": _U2},
        ],
        add_generation_prompt=True,
    )
    try:
        system_prefix = full[: full.index(_SYS)]
        after_user = chat.render([{"role": "system", "content": _SYS}, {"role": "user", "content": _U1}])
        user_suffix = after_user[after_user.index(_U1) + len(_U1) :]
        assistant_prefix = _between(full, _U1, _A1).removeprefix(user_suffix)
        with_answer = chat.render(
            [
                {"role": "system", "content": _SYS},
                {"role": "user", "content": _U1},
                {"role": "assistant", "content": _A1},
            ]
        )
        assistant_suffix = with_answer[with_answer.index(_A1) + len(_A1) :]
        user_prefix = _between(full, _A1, _U2).removeprefix(assistant_suffix)
        system_suffix = _between(full, _SYS, _U1).removesuffix(user_prefix)
    except ValueError as exc:
        raise TemplateNotTranslatable(f"the chat template does not keep the probe's turns in order: {exc}") from exc
    pieces = Pieces(system_prefix, system_suffix, user_prefix, user_suffix, assistant_prefix, assistant_suffix)
    check = [
        {"role": "user", "content": _U1},
        {"role": "assistant", "content": _A1},
        {"role": "user", "content": _U2},
        {"role": "assistant", "content": _A2},
        {"role": "user", "content": _U3},
    ]
    expected = chat.render([{"role": "system", "content": _SYS}, *check], add_generation_prompt=True)
    if pieces.render(_SYS, check) != expected:
        raise TemplateNotTranslatable("the chat template's turns do not decompose into per-role prefixes and suffixes")
    return pieces


def _quoted(text: str) -> str:
    if '"""' in text:
        raise TemplateNotTranslatable('the text holds """, which a Modelfile cannot quote')
    return f'"""{text}"""'


def write(chat: ChatTokenizer, gguf_name: str, system_prompt: str, stop: str) -> tuple[str, Pieces]:
    """The Modelfile's text and the pieces its TEMPLATE is made of."""
    pieces = probe(chat)
    lines = [
        f"FROM ./{gguf_name}",
        f"TEMPLATE {_quoted(pieces.go_template())}",
        f'PARAMETER stop "{stop}"',
    ]
    if system_prompt.strip():
        lines.append(f"SYSTEM {_quoted(system_prompt)}")
    return "\n".join(lines) + "\n", pieces
