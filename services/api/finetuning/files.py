"""Files: a `fine-tune` upload is parsed and validated by the skills importer (the same code as
POST /api/skills/{id}/examples/import), off the event loop, and stored parsed in `fb_files`.

A file is the OpenAI chat format only, `{"messages": [...]}` per line; its problems come back
as one 400 in OpenAI's shape, `param: "file"`, whose message starts with the line, e.g.
`line 7: wrong role order: ...`. Nothing is stored for a refused file.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import load_only

from services.api.errors import ApiError, NotFound
from services.api.finetuning import ids
from services.api.finetuning.schemas import PURPOSE, FileDeleted, FileList, FileObject
from services.api.skills.importers import FORMAT_NAMES, InvalidTrainingFile, ParsedImport, parse_training_file
from services.api.skills.validation import MIN_EXAMPLES, validate_examples
from shared.db.models import UploadedFile

MAX_FILENAME = 255
SHOWN_PROBLEMS = 3
FORMAT_HINT = 'each line must be one conversation, {"messages": [{"role": ..., "content": ...}, ...]}'


class InvalidFile(ApiError):
    """A file that is not chat-format JSONL (400, `param: "file"`); nothing of it is stored."""

    code = "invalid_file"

    def __init__(self, message: str, problems: list[dict[str, object]] | None = None) -> None:
        super().__init__(
            message,
            details={"param": "file", "problems": problems or []},
            suggestions=["Fix the lines named in the message and upload the file again."],
        )


@dataclass
class ChatFile:
    """A validated upload: its examples in the skill shape, and what was worth a warning."""

    parsed: ParsedImport
    warnings: list[str]


def _refusal(exc: InvalidTrainingFile) -> InvalidFile:
    problems = list(exc.details.get("problems") or [])
    shown = "; ".join(str(p["message"]) for p in problems[:SHOWN_PROBLEMS])
    more = len(problems) - SHOWN_PROBLEMS
    if more > 0:
        shown += f" (and {more} more problem{'s' if more != 1 else ''})"
    return InvalidFile(shown or exc.message, problems)


def parse_chat_file(filename: str, raw: bytes) -> ChatFile:
    """Blocking: run it in a thread. Raises `InvalidFile`, or `FileTooLarge` (413) past 20 MB."""
    try:
        parsed = parse_training_file(filename, raw)
    except InvalidTrainingFile as exc:
        raise _refusal(exc) from None
    if parsed.format != "openai":
        found = FORMAT_NAMES.get(parsed.format, parsed.format)
        raise InvalidFile(f"{parsed.sources[0]}: not the OpenAI chat format ({found} found); {FORMAT_HINT}")
    warnings = list(parsed.warnings)
    report = validate_examples(parsed.conversations, for_training=False)
    warnings.extend(report.warnings)
    count = len(parsed.conversations)
    if count < MIN_EXAMPLES:
        warnings.append(f"{count} conversations: a fine-tuning job needs at least {MIN_EXAMPLES}")
    return ChatFile(parsed, warnings)


def clean_filename(filename: str | None) -> str:
    name = (filename or "").replace("\x00", "").strip()[:MAX_FILENAME]
    return name or "upload.jsonl"


def to_object(row: UploadedFile) -> FileObject:
    return FileObject(
        id=ids.file_id(row.id),
        bytes=row.bytes,
        created_at=int(row.created_at.timestamp()),
        filename=row.filename,
        status_details=row.status_details,
        example_count=row.example_count,
    )


async def upload(session: AsyncSession, filename: str | None, raw: bytes) -> FileObject:
    name = clean_filename(filename)
    chat = await asyncio.to_thread(parse_chat_file, name, raw)
    row = UploadedFile(
        filename=name,
        purpose=PURPOSE,
        bytes=len(raw),
        format=chat.parsed.format,
        example_count=len(chat.parsed.conversations),
        system_prompt=chat.parsed.system_prompt,
        conversations=[c.model_dump() for c in chat.parsed.conversations],
        status_details="; ".join(chat.warnings) or None,
    )
    session.add(row)
    await session.flush()
    await session.refresh(row)
    return to_object(row)


# A listing never loads the conversations.
SUMMARY = load_only(
    UploadedFile.id,
    UploadedFile.filename,
    UploadedFile.bytes,
    UploadedFile.example_count,
    UploadedFile.status_details,
    UploadedFile.created_at,
    raiseload=True,
)


def file_not_found(file_id: str, param: str = "file_id") -> NotFound:
    return NotFound(f"No such File object: {file_id}", details={"param": param}, code="file_not_found")


async def get_row(session: AsyncSession, file_id: str, *, param: str = "file_id", full: bool = False) -> UploadedFile:
    """The workspace's file, or 404 (an id of another workspace or not of ours is unknown, as any other)."""
    key = ids.parse_file(file_id)
    row = None
    if key is not None:
        query = select(UploadedFile).where(UploadedFile.id == key)
        row = await session.scalar(query if full else query.options(SUMMARY))
    if row is None:
        raise file_not_found(file_id, param)
    return row


async def retrieve(session: AsyncSession, file_id: str) -> FileObject:
    return to_object(await get_row(session, file_id))


async def delete(session: AsyncSession, file_id: str) -> FileDeleted:
    row = await get_row(session, file_id)
    await session.delete(row)
    await session.flush()
    return FileDeleted(id=file_id)


def bad_cursor(value: str, what: str) -> ApiError:
    return ApiError(f"after: '{value}' is not {what} of this list.", details={"param": "after"}, code="invalid_cursor")


async def listing(session: AsyncSession, *, purpose: str | None, limit: int, order: str, after: str | None) -> FileList:
    """Newest first (`order=desc`, the default) or oldest first; `after` is the last id of the previous page."""
    if purpose is not None and purpose != PURPOSE:
        return FileList(data=[], has_more=False)  # Fast Brain keeps fine-tune files only
    newest_first = order == "desc"
    key = tuple_(UploadedFile.created_at, UploadedFile.id)
    query = select(UploadedFile).options(SUMMARY)
    if after is not None:
        cursor_id = ids.parse_file(after)
        cursor = None
        if cursor_id is not None:
            cursor = (
                await session.execute(
                    select(UploadedFile.created_at, UploadedFile.id).where(UploadedFile.id == cursor_id)
                )
            ).one_or_none()
        if cursor is None:
            raise bad_cursor(after, "a file")
        query = query.where(key < tuple_(*cursor) if newest_first else key > tuple_(*cursor))
    order_by = (
        (UploadedFile.created_at.desc(), UploadedFile.id.desc())
        if newest_first
        else (
            UploadedFile.created_at,
            UploadedFile.id,
        )
    )
    rows = list(await session.scalars(query.order_by(*order_by).limit(limit + 1)))
    data = [to_object(row) for row in rows[:limit]]
    return FileList(
        data=data,
        has_more=len(rows) > limit,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )
