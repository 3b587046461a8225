"""The worker's side of the HTTP data plane (SPEC §12.7, bulk data plane).

A blob job whose source carries ``data`` and ``token`` names its lease's data plane.
:class:`DataClient` downloads operand blobs with ``GET {data}/blobs/{hash}``, streamed
into a ``.part`` file beside the blob cache and hashed (BLAKE3) and range-checked as the
bytes arrive; an interrupted download resumes with ``Range: bytes=<have>-``. Only a blob
whose size, hash, entries and row root all match the job becomes a
:class:`~worker.blobcache.VerifiedBlob`; a mismatch deletes the part file and raises
:class:`~worker.blobcache.BlobRejected`. A unit's result goes up with
``PUT {data}/results/{unit}?offset=…`` and ``X-Result-Hash``, resumed from what the pool
says it holds (``GET {data}/results/{unit}``) after an interrupted request.

Transport failures raise :class:`DataPlaneError`; the caller falls back to the stratum
``work.*`` path.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np
import trio
from blake3 import blake3

from protocol.merkle import rows_root
from protocol.workload import ENTRY_MAX, ENTRY_MIN

from .blobcache import BlobRejected, BlobSpec, VerifiedBlob

log = logging.getLogger(__name__)

ATTEMPTS = 5  # requests per blob or result before giving up (each resumes the last)
UPLOAD_PIECE = 1 << 20
TIMEOUT = httpx.Timeout(30.0, connect=10.0)


class DataPlaneError(Exception):
    """The data plane could not be used (transport, or the pool refused the request)."""


@dataclass(frozen=True)
class DataPlane:
    """A lease's data plane: URL base (host filled in) and bearer token."""

    base: str
    token: str

    @classmethod
    def of(cls, data: str, token: str, stratum_host: str) -> DataPlane:
        """The plane a job names; an empty URL host is the stratum connection's host."""
        parts = urlsplit(data)
        if not parts.hostname:
            host = f"[{stratum_host}]" if ":" in stratum_host else stratum_host
            port = f":{parts.port}" if parts.port else ""
            parts = parts._replace(netloc=f"{host}{port}")
        return cls(urlunsplit(parts).rstrip("/"), token)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class DataClient:
    """HTTP downloads and uploads for blob jobs (one ``httpx.AsyncClient`` per transfer,
    so nothing is left open between units)."""

    def __init__(
        self,
        on_bytes: Callable[[int], None] | None = None,
        on_sent: Callable[[int], None] | None = None,
    ) -> None:
        self.on_bytes = on_bytes  # blob bytes received
        self.on_sent = on_sent  # result bytes sent

    # -- blobs ----------------------------------------------------------------------------

    async def fetch_blob(self, plane: DataPlane, spec: BlobSpec, part: Path) -> VerifiedBlob:
        """Download ``spec``'s blob into ``part`` (resuming what is there), verify it."""
        hasher = blake3()
        have = await trio.to_thread.run_sync(_rehash, part, hasher, spec.size)
        url = f"{plane.base}/blobs/{spec.blob_id.hex()}"
        async with httpx.AsyncClient(timeout=TIMEOUT, trust_env=False) as http:
            have = await self._download(http, plane, spec, part, hasher, have, url)
        try:
            return await trio.to_thread.run_sync(_verified, part, hasher, spec)
        finally:
            part.unlink(missing_ok=True)

    async def _download(
        self,
        http: httpx.AsyncClient,
        plane: DataPlane,
        spec: BlobSpec,
        part: Path,
        hasher: Any,
        have: int,
        url: str,
    ) -> int:
        for attempt in range(ATTEMPTS):
            if have >= spec.size:
                break
            headers = {**plane.auth, "Range": f"bytes={have}-"}
            try:
                async with http.stream("GET", url, headers=headers) as answer:
                    if answer.status_code != 206:
                        await answer.aread()
                        raise DataPlaneError(_refusal("GET", url, answer))
                    expected = f"bytes {have}-{spec.size - 1}/{spec.size}"
                    if answer.headers.get("content-range") != expected:
                        raise BlobRejected(
                            f"blob {spec.blob_id.hex()[:16]}…: the pool answered "
                            f"{answer.headers.get('content-range')!r}, asked for {expected!r}"
                        )
                    with part.open("ab") as out:
                        async for chunk in answer.aiter_bytes(UPLOAD_PIECE):
                            if have + len(chunk) > spec.size:
                                raise BlobRejected(f"blob {spec.blob_id.hex()[:16]}… runs long")
                            await trio.to_thread.run_sync(_take, out, hasher, chunk)
                            have += len(chunk)
                            if self.on_bytes is not None:
                                self.on_bytes(len(chunk))
            except BlobRejected:
                part.unlink(missing_ok=True)
                raise
            except httpx.HTTPError as exc:
                log.info("blob download interrupted at %d bytes (%s): resuming", have, exc)
                if attempt == ATTEMPTS - 1:
                    raise DataPlaneError(f"GET {url}: {exc}") from None
        return have

    async def prefetch_blob(self, plane: DataPlane, bid: bytes, part: Path, max_bytes: int) -> int:
        """Download the blob named ``bid`` (size not known yet: SPEC §12.7 ``next``) into
        ``part``, entries range-checked and BLAKE3-hashed as they stream; its size.

        :class:`DataPlaneError` if the pool refuses or the blob is over ``max_bytes``;
        :class:`BlobRejected` if the bytes are not the hash's. Only the content hash is
        known here: the rows are checked when a job names the blob (``BlobCache.load``).
        """
        hasher = blake3()
        short = bid.hex()[:16]
        url = f"{plane.base}/blobs/{bid.hex()}"
        part.unlink(missing_ok=True)
        have = 0
        try:
            async with (
                httpx.AsyncClient(timeout=TIMEOUT, trust_env=False) as http,
                http.stream("GET", url, headers={**plane.auth, "Range": "bytes=0-"}) as answer,
            ):
                if answer.status_code != 206:
                    await answer.aread()
                    raise DataPlaneError(_refusal("GET", url, answer))
                total = _range_total(answer.headers.get("content-range"))
                if total is None or total > max_bytes:
                    raise DataPlaneError(
                        f"blob {short}…: {answer.headers.get('content-range')!r} is not a"
                        f" range of at most {max_bytes} bytes"
                    )
                with part.open("wb") as out:
                    async for chunk in answer.aiter_bytes(UPLOAD_PIECE):
                        if have + len(chunk) > total:
                            raise BlobRejected(f"blob {short}… runs long")
                        await trio.to_thread.run_sync(_take, out, hasher, chunk)
                        have += len(chunk)
                        if self.on_bytes is not None:
                            self.on_bytes(len(chunk))
            if have != total or hasher.digest() != bid:
                raise BlobRejected(f"blob {short}…: content does not match its hash")
        except httpx.HTTPError as exc:
            part.unlink(missing_ok=True)
            raise DataPlaneError(f"GET {url}: {exc}") from None
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return have

    # -- results --------------------------------------------------------------------------

    async def upload_result(self, plane: DataPlane, unit: bytes, raw: bytes) -> dict[str, Any]:
        """Upload a unit's C (resuming after an interruption); the pool's final answer."""
        digest = await trio.to_thread.run_sync(lambda: blake3(raw).hexdigest())
        url = f"{plane.base}/results/{unit.hex()}"
        async with httpx.AsyncClient(timeout=TIMEOUT, trust_env=False) as http:
            return await self._upload(http, plane, url, raw, digest)

    async def _upload(
        self, http: httpx.AsyncClient, plane: DataPlane, url: str, raw: bytes, digest: str
    ) -> dict[str, Any]:
        headers = {**plane.auth, "X-Result-Hash": digest}
        offset = 0
        last = ""
        for attempt in range(ATTEMPTS):
            try:
                if attempt:  # after an interruption: where does the pool stand?
                    status = await http.get(url, headers=plane.auth)
                    if status.status_code != 200:
                        raise DataPlaneError(_refusal("GET", url, status))
                    offset = int(status.json()["received"])
                answer = await http.put(
                    url,
                    params={"offset": offset},
                    headers=headers,
                    content=_pieces(raw, offset, self.on_sent),
                )
            except httpx.HTTPError as exc:
                last = f"PUT {url}: {exc}"
                log.info("result upload interrupted (%s): resuming", exc)
                continue
            if answer.status_code == 200 and "verified" in answer.json():
                return dict(answer.json())
            if answer.status_code in (200, 409, 422):  # short, out of place, spoiled: again
                last = _refusal("PUT", url, answer)
                if answer.status_code == 422:
                    offset = 0
                continue
            raise DataPlaneError(_refusal("PUT", url, answer))
        raise DataPlaneError(f"result not delivered after {ATTEMPTS} requests: {last}")


async def _pieces(
    raw: bytes, offset: int, on_sent: Callable[[int], None] | None
) -> AsyncIterator[bytes]:
    view = memoryview(raw)
    for start in range(offset, len(raw), UPLOAD_PIECE):
        piece = bytes(view[start : start + UPLOAD_PIECE])
        yield piece
        if on_sent is not None:
            on_sent(len(piece))


def _refusal(method: str, url: str, answer: httpx.Response) -> str:
    try:
        why = str(answer.json().get("error", ""))[:200]
    except ValueError:
        why = answer.text[:200]
    return f"{method} {url}: {answer.status_code} {why}".rstrip()


def _range_total(content_range: str | None) -> int | None:
    """``total`` of ``bytes 0-<total-1>/<total>``, or None if it is not that."""
    unit, _, rest = (content_range or "").partition(" ")
    span, _, total = rest.partition("/")
    if unit != "bytes" or not total.isdigit() or int(total) == 0:
        return None
    return int(total) if span == f"0-{int(total) - 1}" else None


def _rehash(part: Path, hasher: Any, size: int) -> int:
    """Feed what a part file already holds to ``hasher``; its length (0: none, or too long)."""
    try:
        with part.open("rb") as f:
            have = 0
            while chunk := f.read(UPLOAD_PIECE):
                hasher.update(chunk)
                have += len(chunk)
    except FileNotFoundError:
        return 0
    if have > size:
        part.unlink(missing_ok=True)
        hasher.reset()
        return 0
    return have


def _take(out: Any, hasher: Any, chunk: bytes) -> None:
    """Check one streamed chunk's entries, hash it and append it to the part file."""
    values = np.frombuffer(chunk, dtype=np.int8)
    if values.size and (int(values.min()) < ENTRY_MIN or int(values.max()) > ENTRY_MAX):
        raise BlobRejected(f"blob bytes outside [{ENTRY_MIN}, {ENTRY_MAX}] in the stream")
    hasher.update(chunk)
    out.write(chunk)


def _verified(part: Path, hasher: Any, spec: BlobSpec) -> VerifiedBlob:
    """The finished part file as a verified blob (size, streamed hash, row root)."""
    short = spec.blob_id.hex()[:16]
    raw = part.read_bytes()
    if len(raw) != spec.size:
        raise BlobRejected(f"blob {short}… is {len(raw)} bytes, expected {spec.size}")
    if hasher.digest() != spec.blob_id:
        raise BlobRejected(f"blob {short}…: content does not match its hash")
    matrix = np.frombuffer(raw, dtype=np.int8).reshape(spec.rows, spec.k)
    if rows_root(matrix) != spec.rows_root:
        raise BlobRejected(f"blob {short}…: rows do not match the job's row root")
    return VerifiedBlob(spec, matrix)
