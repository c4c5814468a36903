"""Operators: GET /admin/segments/{name}.csv — a segment's members as CSV, streamed, phones masked."""
from __future__ import annotations

import csv
import io

from aiohttp import web

from app import keys
from app.domain import segments
from app.errors import NotFound
from handlers.admin.auth import require_admin

COLUMNS = ("member_id", "openid", "phone", "tier", "points", "recency", "frequency", "monetary",
           "last_paid_at")


async def export(request: web.Request) -> web.StreamResponse:
    require_admin(request)
    name = request.match_info["name"]
    if name not in segments.SEGMENTS:
        raise NotFound(f"no segment {name!r}: one of {', '.join(segments.SEGMENTS)}",
                       code="segment_not_found")
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": f'attachment; filename="segment-{name}.csv"',
    })
    await response.prepare(request)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    async for rows in segments.members_of(segment=name, reads=request.app[keys.replica_key]):
        for row in rows:
            writer.writerow([row[column] for column in COLUMNS])
        await response.write(buffer.getvalue().encode())
        buffer.seek(0)
        buffer.truncate()
    await response.write(buffer.getvalue().encode())
    await response.write_eof()
    return response
