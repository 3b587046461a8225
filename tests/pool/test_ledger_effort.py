"""Each block's effort (schema 3), on SQLite and PostgreSQL: its round's accepted share
difficulty over its network difficulty, computed when the block is recorded and kept; and a
ledger of schema 2 migrated, its blocks kept with no effort."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from pool.ledger import CREDITED, Ledger, open_ledger
from pool.ledger.sql import SCHEMA_VERSION
from tests.support import pg
from tests.support.ledger_data import ALICE, BOB, share


@pytest.fixture(params=pg.BACKENDS)
def target(request, tmp_path) -> str:
    return pg.ledger_target(request.param, request.config, tmp_path)


@pytest.fixture
def ledger(target):
    with open_ledger(target) as led:
        yield led


def record(led: Ledger, n: int, t: float, network: float = 10.0) -> int:
    return led.record_block(100 + n, bytes([n]) * 32, 5_000_000_000, t, BOB, "rig1", network)


def test_each_block_counts_the_shares_since_the_block_before_it(target):
    with open_ledger(target) as led:
        # Round 1: shares at 1..10 (difficulty 1.5), the block at 10 (its own share is the
        # last of them). Round 2: shares at 11..14 (difficulty 2), the block at 14.
        led.insert_shares([share(i, ALICE, float(i), difficulty=1.5) for i in range(1, 11)])
        first = record(led, 1, 10.0, network=5.0)
        led.insert_shares([share(i, BOB, float(i), difficulty=2.0) for i in range(11, 15)])
        second = record(led, 2, 14.0, network=4.0)
        empty = record(led, 3, 20.0)  # no share since the block before: effort 0
        assert led.block(first).effort == pytest.approx(15 / 5)
        assert led.block(second).effort == pytest.approx(8 / 4)
        assert led.block(empty).effort == 0
        # Later shares and recording the same block again change nothing.
        led.insert_shares([share(i, ALICE, 9.5 + i / 100) for i in range(30, 40)])
        assert record(led, 1, 10.0, network=5.0) == first
        assert led.block(first).effort == pytest.approx(15 / 5)
    with open_ledger(target) as led:  # kept across a reopen, and through the life cycle
        assert [b.effort for b in led.blocks(10)] == [0, pytest.approx(2), pytest.approx(3)]
        assert led.credit_block(first, 2.0, 0, None).effort == pytest.approx(3)
        assert led.confirm_block(first).effort == pytest.approx(3)


def test_a_block_recorded_with_its_submission_has_its_effort(ledger):
    ledger.insert_shares([share(i, ALICE, 100.0 + i, difficulty=0.5) for i in range(6)])
    block_id = ledger.record_block(9, b"\x09" * 32, 1000, 105.0, ALICE, "r", 2.0, b"sub")
    (pending,) = ledger.pending_submissions()
    assert pending.block.id == block_id and pending.submission == b"sub"
    assert pending.block.effort == pytest.approx(6 * 0.5 / 2.0)
    ledger.reject_block(block_id, "stale")
    assert ledger.block(block_id).effort == pytest.approx(1.5)


# --- a ledger of schema version 2, migrated -----------------------------------------------


def v2_ledger(target: str) -> None:
    """Schema 2 (version 1's tables and migration 2) with a share and a credited block."""
    conn: Any
    if target.startswith("postgresql://"):
        import psycopg

        from pool.ledger import postgres as store

        conn, ph = psycopg.connect(target, autocommit=True), "%s"
    else:
        from pool.ledger import sqlite as store

        conn, ph = sqlite3.connect(target, isolation_level=None), "?"
    run = conn.execute
    try:
        run("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        run("INSERT INTO schema_version (version) VALUES (1)")
        run("INSERT INTO schema_version (version) VALUES (2)")
        for statement in (store.SCHEMA_V1 + ";" + store.MIGRATIONS_TO[2]).split(";"):
            if statement.strip():
                run(statement)
        s = share(1, ALICE, 999.0)
        run(
            "INSERT INTO shares (digest, time, address, worker, job_id, height, difficulty,"
            f" network_difficulty, session_id) VALUES ({', '.join([ph] * 9)})",
            (s.digest, s.time, s.address, s.worker, s.job_id, s.height, s.difficulty,
             s.network_difficulty, s.session_id),
        )  # fmt: skip
        run(
            "INSERT INTO blocks (height, hash, reward, time, address, worker,"
            " network_difficulty, status, fee, remainder, shares_used, reason)"
            f" VALUES ({', '.join([ph] * 12)})",
            (7, b"\x07" * 32, 1000, 1000.0, ALICE, "rig1", 10.0, CREDITED, 10, 0, 1, None),
        )
    finally:
        conn.close()


def test_a_schema_2_ledger_is_migrated_its_blocks_without_effort(target):
    v2_ledger(target)
    with open_ledger(target) as led:
        assert led.schema_version() == SCHEMA_VERSION == 3
        (old,) = led.blocks(10)
        assert (old.height, old.status, old.fee, old.effort) == (7, CREDITED, 10, None)
        assert led.share_count() == 1
        # A new block's round starts after the old block (the share at 1000.0 is its).
        led.insert_shares([share(i, BOB, 998.0 + i, difficulty=2.0) for i in range(2, 6)])
        new = record(led, 8, 1003.0)
        assert led.block(new).effort == pytest.approx(6 / 10)
    with open_ledger(target) as led:  # reopening migrates nothing twice
        assert led.schema_version() == SCHEMA_VERSION
        assert [b.effort for b in led.blocks(10)] == [pytest.approx(0.6), None]
