"""BLAKE3 primitives of mmpow-1: H, HK and the seekable keyed XOF X."""

from blake3 import blake3


def H(*parts: bytes) -> bytes:
    """Unkeyed BLAKE3 of the concatenated parts (32 bytes)."""
    h = blake3()
    for part in parts:
        h.update(part)
    return h.digest()


def HK(key: bytes, data: bytes) -> bytes:
    """Keyed BLAKE3 (32-byte key) of ``data`` (32 bytes)."""
    return blake3(data, key=key).digest()


def X(key: bytes, label: bytes, n: int, seek: int = 0) -> bytes:
    """``n`` bytes of the keyed BLAKE3 output stream of ``label``, from byte ``seek``."""
    return blake3(label, key=key).digest(length=n, seek=seek)
