"""``hub serve``'s server: what the start-up made is frozen out of the garbage collector's sight."""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from hub.cli import FrozenAfterStartupServer


class Held:
    """An object the collector tracks (an instance of a class of ours)."""


async def test_what_the_startup_made_is_frozen_and_what_comes_later_is_not() -> None:
    made_at_startup: list[object] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        made_at_startup.append(Held())
        yield

    config = uvicorn.Config(FastAPI(lifespan=lifespan), host="127.0.0.1", port=0, log_config=None)
    started = asyncio.Event()

    class Observed(FrozenAfterStartupServer):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            started.set()

    server = Observed(config)
    gc.unfreeze()  # an earlier test's freeze would hide this one's
    serving = asyncio.create_task(server.serve())  # as `hub serve` runs it
    try:
        async with asyncio.timeout(10):
            await started.wait()
        made_later = Held()
        tracked = {id(item) for item in gc.get_objects()}
        assert gc.get_freeze_count() > 0
        # Frozen objects are still tracked, but no generation holds them any more.
        assert gc.is_tracked(made_at_startup[0])
        assert id(made_at_startup[0]) not in tracked
        assert id(made_later) in tracked
    finally:
        server.should_exit = True
        await serving
        gc.unfreeze()
