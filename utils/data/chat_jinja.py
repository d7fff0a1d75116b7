"""The trained prompt format as a Jinja ``chat_template``: what every final/ and export carries, so that any chat
endpoint (transformers' ``apply_chat_template``, vLLM, TGI, llama.cpp, ...) renders exactly what training rendered.

One function per template of ``utils/data/templates.py``:

* ``chatml``: the tokenizer stage's ``CHATML_TEMPLATE`` (``render_chatml``'s text);
* ``instruct``, ``alpaca``, ``chat``: ``render_instruct`` / ``render_chat`` (``utils/data/renderers.py``) in Jinja,
  the tokenizer's eos written in as a literal, as training wrote it;
* ``tokenizer``: the model's own template, behind a prelude that does what training did around it: the fixed
  date of ``templates.FIXED_DATE`` (unless the caller passes ``date_string``) and, for a family without a system
  role, the system prompt folded into the first turn.

Each writes only through ``{{- ... -}}`` expressions, so whitespace is exact, and marks the supervised part of an
assistant turn with ``{% generation %}`` (transformers' ``return_assistant_tokens_mask``). Every role the Python
renderer handles has its own branch: a new role (tool results, tool calls on assistant turns) is one more branch
in that template's function. ``tests/data/test_chat_jinja.py`` holds each Jinja render equal to the Python one.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from utils.data.renderers import ALPACA_PREAMBLE
from utils.data.templates import FIXED_DATE, ChatTemplate, get_template, model_type_for
from utils.data.tokenizer import CHATML_TEMPLATE

CHAT_TEMPLATE_FILE = "chat_template.jinja"
_GENERATION_TAG = re.compile(r"\{%-?\s*(end)?generation\s*-?%\}")


def jinja_literal(text: str) -> str:
    """``text`` as a Jinja string literal (JSON's escapes are Jinja's: \\n, \\", \\\\)."""
    return json.dumps(text, ensure_ascii=False)


def trained_chat_template(template: ChatTemplate) -> str:
    """The Jinja that renders what ``template`` rendered in training, for its tokenizer."""
    if template.name == "chatml":
        return CHATML_TEMPLATE
    eos = template.tokenizer.eos_token
    if template.name == "instruct":
        return instruct_jinja(eos, preamble="")
    if template.name == "alpaca":
        return instruct_jinja(eos, preamble=ALPACA_PREAMBLE)
    if template.name == "chat":
        return chat_jinja(eos)
    return tokenizer_jinja(template)


def without_generation_tags(jinja: str) -> str:
    """The same template without ``{% generation %}`` marks, for engines that do not know the tag (llama.cpp)."""
    return _GENERATION_TAG.sub("", jinja)


def _split_system() -> str:
    """``system`` and ``turns``: the first message when it is a system message, and the rest (``_split_system``)."""
    return ("{%- if messages and messages[0]['role'] == 'system' -%}"
            "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
            "{%- else -%}{%- set system = '' -%}{%- set turns = messages -%}{%- endif -%}")


def _turns(user: str, reply: str, eos: str, after_reply: str) -> str:
    """``renderers._turns``: a user turn through ``user``, any other through ``reply`` then eos; a user turn after
    a reply starts with ``after_reply``. ``user`` and ``reply`` are Jinja expressions of ``m['content']``."""
    return ("{%- for m in turns -%}"
            "{%- if m['role'] == 'user' -%}"
            f"{{%- if not loop.first and turns[loop.index0 - 1]['role'] == 'assistant' -%}}"
            f"{{{{- {jinja_literal(after_reply)} -}}}}{{%- endif -%}}"
            f"{{{{- {user} -}}}}"
            "{%- else -%}"
            f"{{% generation %}}{{{{- {reply} + {jinja_literal(eos)} -}}}}{{% endgeneration %}}"
            "{%- endif -%}"
            "{%- endfor -%}")


def instruct_jinja(eos: str, preamble: str) -> str:
    """``render_instruct``: the system message (else ``preamble``) first, then ``### Instruction:`` /
    ``### Response:`` blocks; eos closes each reply. The user block ends with the response header, so a
    conversation that ends on a user turn is a generation prompt with or without ``add_generation_prompt``."""
    head = ("{%- set head = system if system else " + jinja_literal(preamble) + " -%}"
            "{%- if head -%}{{- head + '\\n\\n' -}}{%- endif -%}")
    user = "'### Instruction:\\n' + m['content'] + '\\n\\n### Response:\\n'"
    return _split_system() + head + _turns(user, "m['content']", eos, after_reply="\n\n")


def chat_jinja(eos: str) -> str:
    """``render_chat``: ``System: ...`` first, then ``Human: ...`` / ``Assistant: ...`` lines; eos closes each
    reply (the user line ends with ``Assistant:``, so a conversation that ends on a user turn is a prompt)."""
    head = "{%- if system -%}{{- 'System: ' + system + '\\n' -}}{%- endif -%}"
    user = "'Human: ' + m['content'] + '\\nAssistant:'"
    return _split_system() + head + _turns(user, "' ' + m['content']", eos, after_reply="\n")


def tokenizer_jinja(template: ChatTemplate) -> str:
    """The model's own template behind the prelude of what training did around it (fixed date, folded system)."""
    own = template.tokenizer.chat_template
    prelude = ""
    if "strftime_now" in own or "date_string" in own:
        prelude += ("{%- if date_string is not defined -%}"
                    f"{{%- set date_string = {jinja_literal(FIXED_DATE)} -%}}{{%- endif -%}}")
    if template._fold_system:  # ChatTemplate._prepare folds the system prompt the same way
        prelude += ("{%- if messages | length > 1 and messages[0]['role'] == 'system' -%}"
                    "{%- set messages = [{'role': messages[1]['role'], 'content': messages[0]['content'] + "
                    "'\\n\\n' + messages[1]['content']}] + messages[2:] -%}{%- endif -%}")
    return prelude + own


def write_trained_template(model_dir: Path, template_name: str) -> bool:
    """Make ``model_dir``'s tokenizer carry the trained template; True when that changed its files.

    A tokenizer whose ``chat_template`` already renders it keeps its files byte for byte (and its fingerprint);
    otherwise the template goes to ``chat_template.jinja``, and any other copy (``chat_template`` in
    tokenizer_config.json, chat_template.json) is removed, since readers disagree on which one wins."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    jinja = trained_chat_template(get_template(template_name, tokenizer, model_type_for(model_dir)))
    if tokenizer.chat_template == jinja:
        return False
    config_file = model_dir / "tokenizer_config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if config.pop("chat_template", None) is not None:
            config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (model_dir / "chat_template.json").unlink(missing_ok=True)
    (model_dir / CHAT_TEMPLATE_FILE).write_text(jinja, encoding="utf-8")
    return True
