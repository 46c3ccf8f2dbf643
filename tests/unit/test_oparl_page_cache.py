"""OParl's page cache: bounded in bytes, least recently used out, ETags by generation;
and the front that answers a kept page before FastAPI routes the request."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import httpx
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from kernel.app import TraceAndCountMiddleware
from kernel.idempotency import IdempotencyMiddleware
from kernel.settings import HubSettings
from services.meeting.main import build_app
from services.meeting.oparl import (
    GENERATION_TTL_SECONDS,
    PREFIX,
    PageCache,
    RenderedPage,
    RenderedPageFront,
    Urls,
    page_key,
)


def test_the_least_recently_used_page_leaves_first_when_the_cache_is_full() -> None:
    cache = PageCache(max_bytes=25)
    first = cache.put(("62063", 1, "/papers?page=1"), b"a" * 10)
    cache.put(("62063", 1, "/papers?page=2"), b"b" * 10)
    assert cache.get(("62063", 1, "/papers?page=1")) == first  # now the most recently used
    cache.put(("62063", 1, "/papers?page=3"), b"c" * 10)
    assert cache.get(("62063", 1, "/papers?page=2")) is None
    assert cache.get(("62063", 1, "/papers?page=1")) is not None
    assert cache.get(("62063", 1, "/papers?page=3")) is not None


def test_a_page_larger_than_the_cache_is_served_but_not_kept() -> None:
    cache = PageCache(max_bytes=5)
    page = cache.put(("62063", 1, "/papers"), b"too large")
    assert page.content == b"too large"
    assert cache.get(("62063", 1, "/papers")) is None


def test_the_etag_names_the_generation_and_the_content() -> None:
    cache = PageCache()
    old = cache.put(("62063", 1, "/papers"), b"{}")
    new = cache.put(("62063", 2, "/papers"), b"{}")
    other = cache.put(("62063", 2, "/meetings"), b"[]")
    assert old.etag.startswith('"1-') and new.etag.startswith('"2-')
    assert old.etag != new.etag != other.etag
    assert cache.get(("62063", 1, "/papers")) == old  # an older generation is simply not asked


def test_a_list_size_holds_for_its_generation_only() -> None:
    cache = PageCache()
    assert cache.list_size("62063", "papers", 1) is None
    cache.keep_list_size("62063", "papers", 1, 10_000)
    assert cache.list_size("62063", "papers", 1) == 10_000
    assert cache.list_size("62063", "papers", 2) is None  # published since: count again
    assert cache.list_size("62063", "meetings", 1) is None
    assert cache.list_size("92137", "papers", 1) is None
    cache.keep_list_size("62063", "papers", 2, 10_001)
    assert cache.list_size("62063", "papers", 1) is None


def test_a_generation_read_is_trusted_for_a_second_or_until_this_process_publishes() -> None:
    cache = PageCache()
    assert cache.known_generation("62063", now=100.0) is None
    cache.keep_generation("62063", 7, now=100.0)
    assert cache.known_generation("62063", now=100.9) == 7
    assert cache.known_generation("62063", now=100.0 + GENERATION_TTL_SECONDS) is None
    assert cache.known_generation("92137", now=100.5) is None
    cache.forget_generation("62063")  # this process just published for the tenant
    assert cache.known_generation("62063", now=100.5) is None


# -- RenderedPageFront: a kept page answered before FastAPI routes ------------------------

BASE = "https://oparl.example.be"
PAPERS_PAGE_2 = page_key(Urls(BASE + PREFIX), "62063", "papers", 3, "page=2&after=x")


class Routes:
    """Stands for FastAPI's routes: notes what reached them and answers ``routed``."""

    def __init__(self) -> None:
        self.reached: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.reached.append(f"{scope['path']}?{scope['query_string'].decode()}")
        await Response(b"routed")(scope, receive, send)


def front_client(cache: PageCache) -> tuple[httpx.AsyncClient, Routes]:
    routes = Routes()
    front = RenderedPageFront(routes)
    state = SimpleNamespace(oparl_pages=cache, settings=SimpleNamespace(public_base_url=BASE))

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = SimpleNamespace(state=state)  # as Starlette sets it
        await front(scope, receive, send)

    transport = httpx.ASGITransport(app=application)
    return httpx.AsyncClient(transport=transport, base_url="http://meeting"), routes


def kept_papers_page() -> tuple[PageCache, RenderedPage]:
    cache = PageCache()
    cache.keep_generation("62063", 3, time.monotonic())
    return cache, cache.put(PAPERS_PAGE_2, b'{"data": []}')


async def test_the_front_answers_a_kept_page_and_a_304_without_routing() -> None:
    cache, kept = kept_papers_page()
    client, routes = front_client(cache)
    async with client:
        answer = await client.get(f"{PREFIX}/bodies/62063/papers?page=2&after=x")
        held = await client.get(
            f"{PREFIX}/bodies/62063/papers?page=2&after=x",
            headers={"If-None-Match": answer.headers["etag"]},
        )
    assert answer.status_code == 200 and answer.content == b'{"data": []}'
    assert answer.headers["etag"] == kept.etag
    assert answer.headers["access-control-allow-origin"] == "*"
    assert held.status_code == 304
    assert routes.reached == []


async def test_the_front_passes_on_what_it_does_not_hold() -> None:
    cache, _ = kept_papers_page()
    client, routes = front_client(cache)
    asked = [
        f"{PREFIX}/bodies/62063/papers?page=3",  # another page of the list
        f"{PREFIX}/bodies/62063/meetings?page=2&after=x",  # another list
        f"{PREFIX}/bodies/62063/papers/1?page=2&after=x",  # an object
        f"{PREFIX}/bodies/92137/papers?page=2&after=x",  # another tenant
        f"{PREFIX}/bodies?page=2&after=x",
    ]
    async with client:
        answers = [await client.get(path) for path in asked]
        posted = await client.post(f"{PREFIX}/bodies/62063/papers?page=2&after=x")
    assert [answer.content for answer in answers] == [b"routed"] * len(asked)
    assert posted.content == b"routed"
    assert len(routes.reached) == len(asked) + 1


async def test_the_front_passes_on_once_the_generation_read_is_too_old() -> None:
    cache = PageCache()
    cache.keep_generation("62063", 3, time.monotonic() - GENERATION_TTL_SECONDS)
    cache.put(PAPERS_PAGE_2, b'{"data": []}')
    client, routes = front_client(cache)
    async with client:
        answer = await client.get(f"{PREFIX}/bodies/62063/papers?page=2&after=x")
    # The routes read the generation again: the tenant may have published meanwhile.
    assert answer.content == b"routed" and len(routes.reached) == 1


def test_the_meeting_app_puts_the_front_innermost(tmp_path: Path) -> None:
    app = build_app(HubSettings(var_dir=tmp_path / "var"))
    # Starlette wraps the routes in user_middleware from the last to the first; the front
    # is innermost, behind the Idempotency-Key check that every service has.
    innermost = app.user_middleware[-1].cls(app.router)  # type: ignore[call-arg]
    assert isinstance(innermost, IdempotencyMiddleware)
    assert isinstance(innermost.app, RenderedPageFront)
    assert TraceAndCountMiddleware in [middleware.cls for middleware in app.user_middleware]
