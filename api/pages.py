"""Keyset pagination for the list routes: `limit` and an opaque `after` cursor in the query,
the next page's cursor in the answer's headers.

The body stays a JSON list (every existing client reads one); the next page is in a `Link:
<...>; rel="next"` header (RFC 8288) and in `X-Next-Cursor`, both absent on the last page. A
cursor is the last row's sort key, so a page costs one indexed range scan however deep it is,
and rows added or removed meanwhile never make a walk repeat or skip the others.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Annotated

from fastapi import HTTPException, Query, Request, Response

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_PREFIX = "k1:"
# A PostgreSQL bigint: a larger cursor would fail in the database (a 500), not here (a 422).
_BIGINT_MIN, _BIGINT_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class Page:
    """What a list request asked for: at most `limit` rows after the key `after` (None: from the start)."""

    limit: int
    after: str | None


def encode(key: str | int) -> str:
    """The opaque cursor for a row's sort key."""
    return base64.urlsafe_b64encode((_PREFIX + str(key)).encode()).decode().rstrip("=")


def decode(cursor: str) -> str:
    """The sort key in a cursor; a 422 naming `after` for anything this API did not make.

    Non-printable text (NUL above all) is refused here: PostgreSQL rejects NUL in a text
    parameter with a DataError, which a tampered cursor would otherwise turn into a 500.
    """
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not text.startswith(_PREFIX) or not text.isprintable():
        raise HTTPException(422, [{"loc": ["query", "after"], "type": "value_error",
                                   "msg": "not a cursor from this API: pass the X-Next-Cursor of the previous page"}])
    return text.removeprefix(_PREFIX)


def page(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"at most this many rows (default {DEFAULT_LIMIT}, "
                                f"at most {MAX_LIMIT})", examples=[DEFAULT_LIMIT])] = DEFAULT_LIMIT,
    after: Annotated[str | None, Query(max_length=512, description="the cursor of the previous page "
                                       "(its X-Next-Cursor header); none: the first page",
                                       examples=["azE6bm9kZS0wMDQy"])] = None,
) -> Page:
    """The FastAPI dependency of every paginated list route."""
    return Page(limit=limit, after=decode(after) if after is not None else None)


def int_key(page_: Page) -> int | None:
    """`page_.after` for a route whose sort key is an integer id; 422 if it is not one.

    Bounded to a bigint so that a tampered cursor is a 422 here, not an overflow in the database.
    """
    if page_.after is None:
        return None
    try:
        key = int(page_.after)
    except ValueError:
        key = None
    if key is None or not _BIGINT_MIN <= key <= _BIGINT_MAX:
        raise HTTPException(422, [{"loc": ["query", "after"], "type": "value_error",
                                   "msg": "not a cursor of this list"}])
    return key


def link_next(request: Request, response: Response, last_key: str | int | None) -> None:
    """Say where the next page starts (`last_key`: the last row's key, None on the last page)."""
    if last_key is None:
        return
    cursor = encode(last_key)
    url = request.url.include_query_params(after=cursor)
    response.headers["X-Next-Cursor"] = cursor
    response.headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
