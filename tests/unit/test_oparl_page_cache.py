"""OParl's page cache: bounded in bytes, least recently used out, ETags by generation."""

from __future__ import annotations

from services.meeting.oparl import GENERATION_TTL_SECONDS, PageCache


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
