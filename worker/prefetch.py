"""The next unit's operands fetched while this one is mined (SPEC §12.7, prefetch).

A blob job whose source carries ``next`` names the two blobs of the unit the pool has
reserved for this session, and a token that already authorizes their ``GET``.
:meth:`Prefetcher.want` records them (it never blocks); :meth:`Prefetcher.run`, one task of
the worker's nursery, fetches them one prefetch at a time into the blob cache, skipping
what the cache holds, each blob bounded by the cache's size and checked by its content
hash as it streams (:meth:`~worker.data_client.DataClient.prefetch_blob`; one that would
not fit beside the unit being mined is refused before its bytes travel), then adopted by
the cache without row metadata: the next job that names it verifies its rows against its
``a_root``/``b_root`` on load, and mines it with no download.

The current unit's own fetch comes first: :meth:`Prefetcher.settle`, called before it,
waits for a prefetch that is bringing the very blob it needs and cancels any other. A
prefetch that fails, is cancelled or is never used is dropped quietly (a debug line).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from protocol.messages import NextUnit

from .blobcache import BlobCache, BlobRejected
from .data_client import DataClient, DataPlane, DataPlaneError

log = logging.getLogger(__name__)

_Key = tuple[str, bytes, bytes]  # a reservation: (token, a, b)


class Prefetcher:
    """One background prefetch at a time of the blobs a job's ``next`` names."""

    def __init__(
        self, cache: Callable[[], BlobCache], data: DataClient, limiter: trio.CapacityLimiter
    ) -> None:
        self._cache = cache
        self._data = data
        self._limiter = limiter
        self._wanted: tuple[_Key, DataPlane] | None = None
        self._last: _Key | None = None  # the reservation asked for last
        self._wake = trio.Event()
        self._running: frozenset[bytes] = frozenset()
        self._scope: trio.CancelScope | None = None
        self._done = trio.Event()
        self._done.set()
        self.fetched = 0  # blobs brought into the cache by a prefetch
        self.dropped = 0  # prefetches that failed or were cancelled

    def want(self, plane: DataPlane, nxt: NextUnit) -> None:
        """Prefetch ``nxt``'s blobs from ``plane``'s data plane (its own token); once per
        reservation, however many jobs repeat it."""
        key = (nxt.token, nxt.a, nxt.b)
        if key == self._last:
            return
        self._last = key
        self._wanted = (key, DataPlane(plane.base, nxt.token))
        if self._scope is not None and not self._running & {nxt.a, nxt.b}:
            self._scope.cancel()  # a reservation the pool dropped: fetch the new one instead
        self._wake.set()

    async def settle(self, bid: bytes) -> None:
        """Before the current unit fetches ``bid``: wait for a prefetch bringing it, cancel
        any other (the current unit goes first)."""
        if bid in self._running:
            await self._done.wait()
        elif self._scope is not None:
            self._scope.cancel()

    async def run(self) -> None:
        """Prefetch what :meth:`want` asks for, one request at a time, until cancelled."""
        while True:
            while self._wanted is None:
                await self._wake.wait()
                self._wake = trio.Event()
            key, plane = self._wanted
            self._wanted = None
            ids = key[1:]
            self._running, self._done = frozenset(ids), trio.Event()
            what = " and ".join(f"{bid.hex()[:16]}…" for bid in ids)
            try:
                with trio.CancelScope() as scope:
                    self._scope = scope
                    await self._fetch(plane, ids)
                if scope.cancelled_caught:
                    self.dropped += 1
                    if self._last == key:
                        self._last = None  # a later job naming it may try again
                    log.debug("prefetch of blobs %s cancelled: other work goes first", what)
            except (DataPlaneError, BlobRejected, OSError) as exc:
                self.dropped += 1
                log.debug("prefetch of blobs %s dropped: %s", what, exc)
            except Exception as exc:  # never let a prefetch stop the worker
                self.dropped += 1
                log.debug("prefetch of blobs %s dropped: %r", what, exc, exc_info=True)
            finally:
                self._scope = None
                self._running = frozenset()
                self._done.set()

    async def _fetch(self, plane: DataPlane, ids: tuple[bytes, ...]) -> None:
        cache = self._cache()
        for bid in ids:
            if bid in cache:
                continue
            part = cache.dir / f".part-next-{bid.hex()}"
            # Only what the cache can keep beside the unit being mined: a blob that would
            # not fit is refused by its Content-Range, before its bytes travel.
            room = await trio.to_thread.run_sync(cache.room, limiter=self._limiter)
            size = await self._data.prefetch_blob(plane, bid, part, room)
            kept = await trio.to_thread.run_sync(
                cache.adopt, bid, part, size, limiter=self._limiter
            )
            if kept:
                self.fetched += 1
                log.debug("prefetched blob %s… (%d bytes)", bid.hex()[:16], size)
            else:
                log.debug("prefetched blob %s… does not fit the cache; dropped", bid.hex()[:16])


__all__ = ["Prefetcher"]
