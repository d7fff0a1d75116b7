"""One entry of an SFT dataset config's ``datasets`` list (``DatasetSpec``): its fields, the layouts and roles it
may name, and the checks that make a bad entry one clear line before anything is read (``utils.data.sources``
reads the rows it names)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from utils.common.config_schema import setting
from utils.common.errors import UserError

TYPES = ("huggingface", "json", "jsonl", "parquet", "csv", "markdown_transcripts", "text_files")
FORMATS = ("auto", "single_turn", "messages", "sharegpt", "oasst", "transcript", "text")
ROLES = ("system", "user", "assistant")
MESSAGE_ROLES = (*ROLES, "tool")
"""Roles of a ``messages`` row: ``tool`` holds a tool's result."""
SHAREGPT_ROLES = (*ROLES, "tool", "tool_call")
"""What a ShareGPT ``from`` value may map to: ``tool_call`` is an assistant turn whose value is a call's JSON."""
# Which text_fields keys each layout understands ("auto" infers the layout from them).
TEXT_FIELDS = {
    "single_turn": {"prompt", "response", "input", "context", "system"},
    "messages": {"messages", "system", "tools", "reasoning"},
    "sharegpt": {"conversations", "system", "tools", "reasoning"},
    "transcript": {"text"},
    "oasst": set(),
    "text": {"text"},
}
NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]*$"
"""A corpus or dataset entry name: it names folders and files."""
REASONING_MODES = ("train", "keep_context", "drop")
"""What a dataset's ``reasoning`` setting does with traces (``utils/data/reasoning.py``)."""
TEXT_FIELD_DOCS = {
    'prompt': "Field with the user's instruction.",
    'response': "Field with the assistant's answer.",
    'input': "Optional field appended to the prompt when non-empty (Alpaca input).",
    'context': "Optional field appended to the prompt when non-empty (Dolly context).",
    'system': "Optional field with a system message, used when non-empty.",
    'messages': "Field with the [{role, content}] list.",
    'conversations': "Field with the ShareGPT [{from, value}] list.",
    'tools': "messages and sharegpt: field with the row's function definitions (a list, or JSON text of one; "
             "default \"tools\"), rendered by the template with tools=; never supervised.",
    'reasoning': "messages and sharegpt: the key on each message that holds an assistant's reasoning trace (default "
                 "\"reasoning_content\"); a `<think>...</think>` block at the start of an assistant's content and "
                 "LLaMA-Factory's typed reasoning parts are read too. What happens to traces: the entry's reasoning "
                 "setting.",
    'text': "Field with a Human:/Assistant: transcript (e.g. \"chosen\" for Anthropic HH), or with the raw text of "
            "format text.",
}
"""Every key text_fields may name, with what it names (its description in the schema and docs/CONFIG.md)."""
# The keys that make "auto" pick a layout from text_fields.
KEY_FIELDS = {"single_turn": {"prompt", "response"}, "messages": {"messages"},
              "sharegpt": {"conversations"}, "transcript": {"text"}}


@dataclass(frozen=True)
class Participants:
    """Speaker markers of a markdown transcript, per role: plain strings or regexes (see use_regex)."""

    user: list[str] = setting(default_factory=list, items={"type": "string", "minLength": 1})
    """Markers of the user, e.g. "**User**:", "## User", "Human:"."""
    assistant: list[str] = setting(default_factory=list, items={"type": "string", "minLength": 1})
    """Markers of the assistant, e.g. "**Assistant**:", "# ChatGPT", "AI:"."""
    system: list[str] = setting(default_factory=list, items={"type": "string", "minLength": 1})
    """Markers of a system message (only kept before the first user turn)."""
    ignore: list[str] = setting(default_factory=list, items={"type": "string", "minLength": 1})
    """Markers of blocks to drop whole, e.g. tool output ("# Tool", "# Code output")."""


@dataclass(frozen=True)
class DatasetSpec:
    """One source of conversations."""

    json_schema_extra: ClassVar[dict] = {"allOf": [{
        "if": {"properties": {"type": {"const": "markdown_transcripts"}}, "required": ["type"]},
        "then": {"required": ["directories", "participants"]},
        "else": {"required": ["dataset_name"]}}]}
    """Beyond the fields: markdown_transcripts needs directories and participants, every other type a dataset_name."""

    name: str = setting(pattern=NAME_PATTERN)
    """Short unique name of this source; used in reports, origins and mixture.target_ratios."""
    type: str = setting(enum=TYPES)
    """Where the rows come from: huggingface (datasets.load_dataset, streaming), json (a top-level array, .json or
    .json.gz), jsonl (.jsonl or .jsonl.gz), parquet, csv (with a header row), markdown_transcripts (chat exports
    in .md files), or text_files (plain .txt/.md files, one document each; format text)."""
    dataset_name: str | None = setting(None, type="string", minLength=1)
    """For huggingface: the hub name (or a builder such as "json" with data_files). Otherwise a file, a glob, or a
    directory (all files of the type inside it, recursively). Relative paths resolve against the current working
    directory."""
    format: str = setting("auto", enum=FORMATS)
    """Row layout: auto (guess per row, or from text_fields), single_turn (prompt/response fields), messages
    ([{role, content}]), sharegpt ([{from, value}]), oasst (OpenAssistant message rows; one conversation per
    tree, best-ranked replies), transcript ("Human:"/"Assistant:" text), or text (raw text for replay: the
    text_fields.text field, default "text", is cut into sequence_length chunks whose every token is trained; no
    template, no quality filters)."""
    text_fields: dict[str, str] = setting(default_factory=dict, additionalProperties=False, properties={
        key: {"description": doc, "type": "string"} for key, doc in TEXT_FIELD_DOCS.items()})
    """Which row fields hold the text. single_turn: prompt, response, optional input/context (appended to the
    prompt) and system; messages: messages (+ system, tools, reasoning); sharegpt: conversations (+ system,
    tools, reasoning); transcript: text. A value may be a dotted path into nested data ("instances.0.output")."""
    role_map: dict[str, str] = setting(default_factory=dict, additionalProperties={"enum": SHAREGPT_ROLES})
    """ShareGPT only: extra from-value -> role entries, added to the defaults (human/user -> user;
    gpt/chatgpt/bing/bard/assistant/model -> assistant; system -> system; function_call -> tool_call;
    observation/tool -> tool). tool_call: an assistant turn whose value is a call's JSON ({name, arguments});
    tool: a tool's result."""
    weight: float = setting(1.0, minimum=0)
    """Relative sampling weight of this source in the mixture."""
    split: str = setting("train", minLength=1)
    """huggingface only: the split to read."""
    dataset_config: str | None = None
    """huggingface only: the dataset's configuration name (e.g. wikitext-2-raw-v1); null for none."""
    data_files: str | list[str] | dict | None = setting(
        None, type=["string", "array", "object"],
        additionalProperties={"type": ["string", "array"], "items": {"type": "string"}})
    """huggingface only: passed to datasets.load_dataset (a path, a list of paths, or split -> paths); relative
    paths resolve against the current working directory."""
    max_examples: int | None = setting(None, minimum=0)
    """Stop after this many conversations from this source; null reads everything."""
    license: str | None = setting(None, type="string")
    """License of the data, copied to the data card."""
    input_join: str = "\n\n"
    """Text put between the prompt and a non-empty input/context field."""
    domain: bool = False
    """Marks your own domain data; mixture.custom_data_ratio sets its share."""
    directories: list[str] = setting(default_factory=list, minItems=1, items={"type": "string", "minLength": 1})
    """markdown_transcripts only: folders searched for transcript files; relative paths resolve against the current
    working directory."""
    participants: Participants = field(default_factory=Participants)
    """markdown_transcripts only: speaker markers per role, matched at the start of a line (after at most 3 spaces),
    never inside code fences or list items."""
    use_regex: bool = False
    """markdown_transcripts only: read participants markers as regular expressions (anchored at the line start)
    instead of plain text."""
    case_sensitive: bool = True
    """markdown_transcripts only: whether markers and ignore_lines match case-sensitively."""
    file_glob: str = setting("**/*.md", minLength=1)
    """markdown_transcripts only: which files of the directories to read."""
    ignore_lines: list[str] = setting(default_factory=list, items={"type": "string", "minLength": 1})
    """markdown_transcripts only: regular expressions; a whole line matching one (outside code fences) is dropped,
    e.g. export date stamps or anchors."""
    reasoning: str = setting("train", enum=REASONING_MODES)
    """What the assistants' reasoning traces become: train (the default: rendered the way the template renders them
    and supervised with their turn, so the model learns to reason as the data does), keep_context (rendered, not
    supervised: each turn trains from the end of its trace and the `</think>` after it) or drop (removed before
    rendering). train and keep_context need a template that renders traces (chatml, instruct, chat and alpaca
    write `<think>\\n...\\n</think>\\n` before the answer; 'tokenizer' when its chat_template reads
    reasoning_content, as Qwen3's does); with one that does not, the stage stops on the first conversation with a
    trace rather than lose them. Qwen3's template leaves out the traces of turns before the last user message:
    those train nothing (the data card counts traces read and rendered)."""

    def __post_init__(self) -> None:
        where = f"dataset '{self.name}'"
        if self.type not in TYPES:
            raise UserError(f"{where}: type: unknown type '{self.type}'; use one of {', '.join(TYPES)}")
        if self.format not in FORMATS:
            raise UserError(f"{where}: format: unknown format '{self.format}'; use one of {', '.join(FORMATS)}")
        if self.weight < 0 or (self.max_examples is not None and self.max_examples < 0):
            raise UserError(f"{where}: weight and max_examples must be >= 0")
        if self.type == "text_files" and self.format == "auto":
            object.__setattr__(self, "format", "text")  # plain files hold nothing but raw text (frozen spec)
        if self.type == "text_files" and self.format != "text":
            raise UserError(f"{where}: format: text_files hold raw text; use format 'text' or leave it out")
        if self.type == "markdown_transcripts":
            self._check_markdown(where)
        elif not self.dataset_name:
            raise UserError(f"{where}: dataset_name: missing; give a hub name, a file, a glob or a directory")
        self._check_text_fields(where)
        bad = {k: v for k, v in self.role_map.items() if v not in SHAREGPT_ROLES}
        if bad:
            raise UserError(f"{where}: role_map: {bad} maps to unknown roles; use {', '.join(SHAREGPT_ROLES)}")
        if self.reasoning not in REASONING_MODES:
            raise UserError(f"{where}: reasoning: unknown value {self.reasoning!r}; use one of "
                            f"{', '.join(REASONING_MODES)}")

    def _check_markdown(self, where: str) -> None:
        if not self.directories:
            raise UserError(f"{where}: directories: missing; list the folders holding the .md transcripts")
        if not self.participants.user or not self.participants.assistant:
            raise UserError(f"{where}: participants: give at least one 'user' and one 'assistant' marker")
        if self.format != "auto":
            raise UserError(f"{where}: format: markdown_transcripts has its own layout; remove 'format'")

    def _check_text_fields(self, where: str) -> None:
        keys = set(self.text_fields)
        if self.format == "auto":
            if keys and layout_for_fields(keys) is None:
                raise UserError(f"{where}: text_fields: keys {sorted(keys)} fit no single layout; "
                                "set 'format' or use the keys of one layout")
            return
        extra = keys - TEXT_FIELDS[self.format]
        if extra:
            raise UserError(f"{where}: text_fields: {sorted(extra)} do not apply to format '{self.format}'; "
                            f"allowed: {sorted(TEXT_FIELDS[self.format]) or 'none'}")
        if self.format == "single_turn" and keys and not {"prompt", "response"} <= keys:
            raise UserError(f"{where}: text_fields: single_turn needs both 'prompt' and 'response'")


def layout_for_fields(keys: set[str]) -> str | None:
    """The layout whose text_fields keys these are (``format: auto``), or None."""
    for layout, needed in KEY_FIELDS.items():
        if needed <= keys <= TEXT_FIELDS[layout]:
            return layout
    return None
