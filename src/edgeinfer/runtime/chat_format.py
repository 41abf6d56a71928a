"""Which chat format a model's chat requests are rendered with: `[llm] chat_template`.

- "" (default): the GGUF's `tokenizer.chat_template`; a GGUF without one gets "plain";
- "plain": a transcript a base (not instruction-tuned) model continues well: the system text,
  then `User: ...` / `Assistant: ...` lines, ending with `Assistant:`. The model would go on
  to write the user's next line, so the reply stops at "\\nUser:";
- anything else: Jinja source, rendered as transformers renders chat templates.

Instruction-tuned models bring their template in the GGUF. A base model such as Gemma 3 270M
has none, and its family's turn markers (`<start_of_turn>user`) mean nothing to it: asked
"What is the capital of France?" in Gemma's turn format it repeats the question; as a plain
transcript it answers "The capital of France is Paris." (greedy). Rendering and tokenizing,
with exactly one BOS, is runtime/chat_template.py's.
"""

from __future__ import annotations

from dataclasses import dataclass

PLAIN = "plain"
_PLAIN_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% else %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
_PLAIN_STOPS = ("\nUser:",)


@dataclass(frozen=True)
class ChatFormat:
    name: str  # "plain", "gguf" or "config"
    template: str  # Jinja source
    stops: tuple[str, ...] = ()  # stop strings every chat reply gets


def chat_format(setting: str, gguf_template: str | None) -> ChatFormat:
    """The format for `[llm] chat_template = setting` on a GGUF carrying `gguf_template`."""
    if setting == PLAIN or (not setting and not gguf_template):
        return ChatFormat(PLAIN, _PLAIN_TEMPLATE, _PLAIN_STOPS)
    if setting:
        return ChatFormat("config", setting)
    assert gguf_template
    return ChatFormat("gguf", gguf_template)
