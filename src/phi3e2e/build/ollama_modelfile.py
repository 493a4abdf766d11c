"""An Ollama Modelfile for a run's GGUF: FROM the file, the run's chat format as TEMPLATE, its stops.

Ollama does not run the Jinja chat template a GGUF carries; it runs a Go text/template. The
TEMPLATE here is derived from the run's own chat template (chat_format.ChatFormat): each role's
turn is rendered alone around a marker, which gives the text before and after its content, and
the text a generation prompt adds. That is only the run's format if the template renders a
conversation turn by turn, so a probe conversation is checked to render exactly as the pieces
put together; a template that does not (one that merges the system prompt into the first user
turn, say) is refused rather than approximated.
"""

from __future__ import annotations

import json
from pathlib import Path

from phi3e2e.chat_format import ChatFormat
from phi3e2e.errors import UserError

ROLES = ("system", "user", "assistant")
_MARK = "\x01CONTENT\x01"
_PROBE = [("system", "S s"), ("user", "U u"), ("assistant", "A a"), ("user", "V v")]


def turn_pieces(chat_format: ChatFormat) -> tuple[dict[str, tuple[str, str]], str]:
    """({role: (text before its content, text after)}, the text that starts the answer), checked.

    A role the template leaves out (Phi-3-medium's drops the system prompt) has no piece."""
    pieces = {}
    for role in ROLES:
        before, found, after = chat_format.render([(role, _MARK)]).partition(_MARK)
        if found:
            pieces[role] = (before, after)
    lone_user = chat_format.render([("user", _MARK)])
    prompted = chat_format.render([("user", _MARK)], add_generation_prompt=True)
    answer_start = prompted.removeprefix(lone_user)
    expected = "".join(pieces[role][0] + text + pieces[role][1] for role, text in _PROBE if role in pieces)
    if not prompted.startswith(lone_user) or chat_format.render(_PROBE, add_generation_prompt=True) != expected + answer_start:
        raise UserError("the run's chat template does not render a conversation turn by turn, so no Ollama TEMPLATE "
                        "matches it; the GGUF carries the template itself (llama.cpp uses it)")
    return pieces, answer_start


def ollama_template(chat_format: ChatFormat) -> str:
    """The chat format as an Ollama Go template over .Messages (no whitespace trimming: the turns' newlines count)."""
    pieces, answer_start = turn_pieces(chat_format)
    branches = [
        f'{"if" if i == 0 else "else if"} eq .Role "{role}" }}}}{_literal(before)}{{{{ .Content }}}}{_literal(after)}'
        for i, (role, (before, after)) in enumerate(pieces.items())
    ]
    return "{{ range .Messages }}{{ " + "{{ ".join(branches) + "{{ end }}{{ end }}" + _literal(answer_start)


def _literal(text: str) -> str:
    """Text as Go template output: "{{" must be written as an action that prints it."""
    return text.replace("{{", '{{ "{{" }}')


def stop_tokens(model_dir: Path) -> list[str]:
    """The tokens that end an answer: generation_config.json's eos_token_id (config.json's if absent), as text."""
    from tokenizers import Tokenizer

    ids, source = None, None
    for name in ("generation_config.json", "config.json"):
        path = model_dir / name
        if path.is_file() and ids is None:
            try:
                ids, source = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id"), path
            except (ValueError, AttributeError):
                raise UserError(f"{path}: not a JSON object") from None
    ids = [ids] if isinstance(ids, int) else ids or []
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise UserError(f"{source}: eos_token_id must be a token id or a list of token ids")
    try:
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    except Exception as e:  # tokenizers raises its own Exception subclass for a file it cannot read
        raise UserError(f"{model_dir / 'tokenizer.json'}: not a tokenizer the tokenizers library reads ({e})") from None
    return [token for token in (tokenizer.id_to_token(i) for i in ids) if token]


def modelfile(gguf_file: str, template: str, stops: list[str]) -> str:
    if '"""' in template:
        raise UserError('the run\'s chat template contains """, which an Ollama Modelfile cannot quote')
    lines = [f"FROM ./{gguf_file}", f'TEMPLATE """{template}"""']
    lines += [f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}" for stop in stops]
    return "\n".join(lines) + "\n"
