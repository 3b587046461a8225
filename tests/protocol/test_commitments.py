"""Row Merkle trees, header and coinbase encoding, addresses, shapes."""

import contextlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.address import make_address, new_address, validate_address
from protocol.errors import ProtocolError
from protocol.header import (
    Coinbase,
    Header,
    assemble_coinbase,
    coinbase_parts,
    parse_coinbase,
)
from protocol.merkle import RowTree, rows_root, verify_proof
from protocol.workload import Shape


@given(st.integers(1, 40), st.integers(1, 8), st.integers(0, 2**32 - 1))
def test_every_row_proves_and_nothing_else_does(rows, k, seed):
    rng = np.random.default_rng(seed)
    m = rng.integers(-64, 65, size=(rows, k), dtype=np.int8)
    tree = RowTree(m)
    assert tree.root == rows_root(m)
    for i in range(rows):
        proof = tree.proof(i)
        assert verify_proof(m[i].tobytes(), i, proof, tree.root)
        assert not verify_proof((m[i] ^ 1).tobytes(), i, proof, tree.root)
        assert not verify_proof(m[i].tobytes(), i + len(tree.levels[0]), proof, tree.root)
        if rows > 1:
            assert not verify_proof(m[i].tobytes(), (i + 1) % rows, proof, tree.root) or (
                m[i].tobytes() == m[(i + 1) % rows].tobytes()
            )


def test_padding_distinguishes_row_counts():
    m = np.ones((3, 4), dtype=np.int8)
    assert rows_root(m) != rows_root(np.ones((4, 4), dtype=np.int8))


@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.binary(min_size=32, max_size=32),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 1),
)
def test_header_round_trip(version, height, h, time, bits):
    hdr = Header(version, height, h, h[::-1], bytes(32), time, bits)
    raw = hdr.encode()
    assert len(raw) == 128
    assert Header.decode(raw) == hdr


def test_header_rejects_bad_input():
    with pytest.raises(ProtocolError):
        Header.decode(bytes(127))
    with pytest.raises(ProtocolError):
        Header.decode(bytes(127) + b"\x01")
    with pytest.raises(ProtocolError):
        Header(1, 2**32, bytes(32), bytes(32), bytes(32), 0, 0).encode()


@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**64 - 1),
    st.text(max_size=40),
    st.binary(min_size=1, max_size=16),
    st.binary(min_size=8, max_size=8),
)
def test_coinbase_round_trip(height, reward, tag, en1, en2):
    address = new_address()
    c1, c2 = coinbase_parts(height, reward, address, tag, len(en1))
    raw = assemble_coinbase(c1, en1, en2, c2)
    cb = parse_coinbase(raw)
    assert cb == Coinbase(height, reward, address, tag, en1, en2)
    assert cb.encode() == raw


@given(st.binary(max_size=200))
def test_garbled_coinbase_only_raises_protocol_error(raw):
    with contextlib.suppress(ProtocolError):
        parse_coinbase(raw)


def test_truncated_coinbase():
    c1, c2 = coinbase_parts(1, 5, new_address(), "t", 4)
    raw = assemble_coinbase(c1, b"abcd", bytes(8), c2)
    for cut in range(len(raw)):
        with pytest.raises(ProtocolError):
            parse_coinbase(raw[:cut])
    with pytest.raises(ProtocolError):
        parse_coinbase(raw + b"x")


def test_addresses():
    a = new_address()
    assert validate_address(a) == a
    assert make_address(bytes(20)) == make_address(bytes(20))
    bad = a[:-1] + ("0" if a[-1] != "0" else "1")
    for s in (bad, a[:-1], "x" + a[1:], "", 5, a[:4] + a[4:].upper()):
        with pytest.raises(ProtocolError) as err:
            validate_address(s)
        assert err.value.code == 24


@pytest.mark.parametrize(
    "dims",
    [
        (15, 16, 128, 32),
        (16, 16, 96, 32),
        (16, 16, 128, 48),
        (16, 16, 100, 32),
        (16, 16, 65536 + 512, 512),
        (0, 16, 128, 32),
        (16.0, 16, 128, 32),
    ],
)
def test_bad_shapes(dims):
    with pytest.raises(ProtocolError):
        Shape(*dims)
