"""OpenAssistant message rows (``format: oasst``): one conversation per message tree, best-ranked replies."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Iterator

from utils.data.messages import Conversation, Skip, item_text, normalize, type_name
from utils.data.sources import BadRow, Row, RowProblem

OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


@dataclass(frozen=True)
class OasstMessage:
    """What a thread needs of one OpenAssistant message row (the rest of the row is not kept)."""

    id: str
    parent: str | None
    role: str
    text: str
    rank: int | None
    created: str
    deleted: bool
    origin: str


def oasst_conversations(rows: Iterable[Row | BadRow], source: str) -> Iterator[Conversation | Skip]:
    """One conversation per OpenAssistant message tree, following the best-ranked reply at every level.

    Flat oasst rows (``message_id``, ``parent_id``, ``role`` prompter|assistant, ``rank``, ``deleted``)
    only make threads once the whole tree is known, so the messages are held in memory (about the size
    of the texts). Deleted messages are never followed. The origin is the root prompt's row.
    """
    messages: dict[str, OasstMessage] = {}
    for row in rows:
        if isinstance(row, BadRow):
            yield Skip(source, row.origin, row.reason, row.detail)
            continue
        try:
            message = oasst_message(row)
        except RowProblem as problem:
            yield Skip(source, row.origin, problem.reason, problem.detail)
            continue
        messages[message.id] = message
    children: dict[str, list[OasstMessage]] = defaultdict(list)
    for message in messages.values():
        if message.parent is not None:
            children[message.parent].append(message)
    for message in messages.values():  # dicts keep file order, so roots come out in file order
        if message.parent is None:
            yield oasst_thread(message, children, source)
        elif message.parent not in messages:
            yield Skip(source, message.origin, "orphan_message",
                       f"parent {message.parent} is not in the data; its replies are left out")


def oasst_message(row: Row) -> OasstMessage:
    """The fields of one oasst row that threads need; a bad row raises RowProblem."""
    data = row.data
    if not isinstance(data, dict):
        raise RowProblem("wrong_type", f"row is {type_name(data)}, expected an object")
    for key in ("message_id", "role", "text"):
        if key not in data:
            raise RowProblem("missing_field", f"field '{key}' missing")
    if not isinstance(data["role"], str) or data["role"] not in OASST_ROLES:
        raise RowProblem("unknown_role", f"role is {data['role']!r}; expected prompter or assistant")
    ids = {key: data.get(key) for key in ("message_id", "parent_id")}
    bad = {key: type_name(v) for key, v in ids.items() if not isinstance(v, (str, int, type(None)))
           or isinstance(v, bool) or (key == "message_id" and v is None)}
    if bad:
        raise RowProblem("wrong_type", ", ".join(f"field '{k}' is {t}, expected text" for k, t in bad.items()))
    parent = None if ids["parent_id"] is None else str(ids["parent_id"])
    rank = data.get("rank")
    return OasstMessage(str(data["message_id"]), parent, OASST_ROLES[data["role"]],
                        item_text(data, "text", "row"), rank if isinstance(rank, int) else None,
                        str(data.get("created_date") or ""), bool(data.get("deleted")), row.origin)


def oasst_thread(root: OasstMessage, children: dict[str, list[OasstMessage]],
                 source: str) -> Conversation | Skip:
    """Root prompt, then at each level the best-ranked live reply of the other role."""
    if root.deleted:
        return Skip(source, root.origin, "deleted", "the root prompt is marked deleted")
    thread = [root]
    while replies := [m for m in children.get(thread[-1].id, ())
                      if not m.deleted and m.role != thread[-1].role]:
        # rank 0 is best; unranked replies come last, then the oldest, then by id for a stable choice
        thread.append(min(replies, key=lambda m: (m.rank is None, m.rank or 0, m.created, m.id)))
    try:
        turns = normalize([{"role": m.role, "content": m.text} for m in thread])
    except RowProblem as problem:
        return Skip(source, root.origin, problem.reason, problem.detail)
    return Conversation(turns, source, root.origin)
