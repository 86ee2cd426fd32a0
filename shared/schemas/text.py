"""Text the database can store: PostgreSQL `text` and `jsonb` reject the NUL character.

A request that carries one (in a JSON body, a query string or a path) gets a 422 at the
boundary instead of a database error. `NoNulStrings` is the pydantic side: a request
model (or a nested one that imports reuse, like `Exchange`) inherits it and every string
in its input, keys included and at any depth (`knowledge_items: list[Any]` too), is checked.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, model_validator
from pydantic_core import PydanticCustomError

NUL = "\x00"
NUL_MESSAGE = "must not contain the NUL character (\\u0000)"


def find_nul(value: Any) -> str | None:
    """The dotted location of the first string holding a NUL ("" for `value` itself), else None."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            if NUL in item:
                return where
        elif isinstance(item, dict):
            for key, child in item.items():
                name = f"{where}.{key}" if where else str(key)
                if isinstance(key, str) and NUL in key:
                    return name
                stack.append((name, child))
        elif isinstance(item, list | tuple):
            stack.extend((f"{where}.{n}" if where else str(n), child) for n, child in enumerate(item))
    return None


class NoNulStrings(BaseModel):
    """Rejects a NUL character anywhere in the input, before the fields are validated."""

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        where = find_nul(data)
        if where is not None:
            raise PydanticCustomError("string_nul", "{field} " + NUL_MESSAGE, {"field": where or "value"})
        return data
