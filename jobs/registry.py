"""Scheduled jobs by name: what `python -m app jobs list|run` and the worker's scheduler use."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable

# A job is `async def run(*, ctx: JobContext, today: date, progress) -> dict` (a summary).


@dataclass(frozen=True)
class Job:
    name: str
    run: Callable[..., Awaitable[dict]]
    schedule: dict  # APScheduler cron trigger fields, in the business timezone
    help: str


JOBS: dict[str, Job] = {}
