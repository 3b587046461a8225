"""One valid example of every message each role sends."""

from __future__ import annotations

from hypothesis import strategies as st

from protocol.messages import (
    Authorize,
    BlobSource,
    Notify,
    Ping,
    Reconnect,
    ShowMessage,
    Submit,
    Subscribe,
    SuggestDifficulty,
    SyntheticSource,
    WorkSpec,
)
from protocol.workload import ALLOWED_R

u32 = st.integers(0, 2**32 - 1)


u64 = st.integers(0, 2**64 - 1)


bin32 = st.binary(min_size=32, max_size=32)


positive = st.floats(min_value=0, exclude_min=True, allow_nan=False, allow_infinity=False)


def printable(min_size: int, max_size: int, extra: str = "") -> st.SearchStrategy[str]:
    chars = st.characters(categories=["L", "N", "P", "S"], include_characters=" " + extra)
    return st.text(chars, min_size=min_size, max_size=max_size).filter(str.isprintable)


@st.composite
def work_specs(draw: st.DrawFn) -> WorkSpec:
    r = draw(st.sampled_from(ALLOWED_R))
    k = r * draw(st.integers(4, 65536 // r))
    m = 16 * draw(st.integers(1, 2**28 - 1))
    n = 16 * draw(st.integers(1, 2**28 - 1))
    source = draw(st.builds(SyntheticSource, seed=bin32) | st.builds(BlobSource, a=bin32, b=bin32))
    return WorkSpec(m, n, k, r, draw(bin32), draw(bin32), source)


logins = st.builds(
    lambda address, worker: address + worker,
    printable(1, 60).filter(lambda s: "." not in s),
    st.just("") | printable(0, 60).map(lambda w: "." + w),
)


client_messages = st.one_of(
    st.builds(
        Subscribe,
        agent=printable(1, 128),
        protocol=st.integers(1, 2**32 - 1),
        resume=st.none() | st.binary(min_size=1, max_size=32),
    ),
    st.builds(Authorize, login=logins, password=st.text(max_size=128)),
    st.builds(
        Submit,
        job_id=printable(1, 64),
        extranonce2=st.binary(min_size=8, max_size=8),
        time=u64,
        tile=st.tuples(u32, u32),
    ),
    st.builds(SuggestDifficulty, difficulty=positive),
    st.just(Ping()),
)


server_messages = st.one_of(
    st.builds(
        Notify,
        job_id=printable(1, 64),
        clean=st.booleans(),
        version=u32,
        height=u32,
        prev_hash=bin32,
        coinbase1=st.binary(min_size=1, max_size=300),
        coinbase2=st.binary(min_size=1, max_size=100),
        time=u64,
        bits=u32,
        difficulty=positive,
        work=work_specs(),
    ),
    st.builds(
        Reconnect,
        host=printable(1, 255),
        port=st.integers(1, 65535),
        wait=st.floats(min_value=0, allow_nan=False, allow_infinity=False),
    ),
    st.builds(ShowMessage, text=st.text(max_size=200)),
)
