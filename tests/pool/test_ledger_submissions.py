"""The ledger's blocks waiting for the node's answer (schema 2), on SQLite and PostgreSQL:
kept with their submission across reopens, found once the node has them, rejected with
the node's reason, their PPLNS window kept by pruning; and a ledger of schema 1 migrated
with its data intact."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from pool.ledger import (
    CREDITED,
    FOUND,
    REJECTED,
    SUBMITTING,
    Ledger,
    LedgerError,
    open_ledger,
)
from pool.ledger.sql import SCHEMA_VERSION
from tests.support import pg
from tests.support.ledger_data import ALICE, BOB, share

SUBMISSION = b"\x8a\xa6header" + bytes(range(256))  # opaque to the ledger


@pytest.fixture(params=pg.BACKENDS)
def target(request, tmp_path) -> str:
    return pg.ledger_target(request.param, request.config, tmp_path)


@pytest.fixture
def ledger(target):
    with open_ledger(target) as led:
        yield led


def record(
    led: Ledger, n: int = 1, t: float = 1000.0, submission: bytes | None = SUBMISSION
) -> int:
    return led.record_block(
        100 + n, bytes([n]) * 32, 5_000_000_000, t, BOB, "rig1", 10.0, submission
    )


def test_a_block_recorded_with_its_submission_waits_for_the_node(ledger):
    ledger.insert_shares([share(i, ALICE if i % 2 else BOB, 900.0 + i) for i in range(10)])
    block_id = record(ledger)
    assert ledger.block(block_id).status == SUBMITTING
    assert record(ledger) == block_id  # the same hash again: the same block, kept once
    (pending,) = ledger.pending_submissions()
    assert pending.block.id == block_id and pending.submission == SUBMISSION
    assert (pending.attempts, pending.last_error) == (0, None)
    # Neither the unlocker nor a credit touches it before the node has answered.
    assert ledger.unlockable_blocks() == []
    assert ledger.credit_block(block_id, 2.0, 100, None).status == SUBMITTING
    assert ledger.block_credits(block_id) == {}
    assert ledger.submission_failed(block_id, "no answer") == 1
    assert ledger.submission_failed(block_id, "still no answer") == 2
    (pending,) = ledger.pending_submissions()
    assert (pending.attempts, pending.last_error) == (2, "still no answer")
    assert ledger.pool_totals().blocks_submitting == 1
    # The node has it: found (once), then credited as any found block.
    assert ledger.block_submitted(block_id) is True
    assert ledger.block_submitted(block_id) is False
    assert ledger.block(block_id).status == FOUND
    assert ledger.pending_submissions() == []
    assert ledger.credit_block(block_id, 2.0, 100, None).status == CREDITED
    assert sum(ledger.block_credits(block_id).values()) > 0
    assert ledger.block_submitted(block_id) is False  # a late duplicate changes nothing
    assert ledger.block(block_id).status == CREDITED


def test_a_block_without_a_submission_is_found_at_once(ledger):
    block_id = record(ledger, submission=None)
    assert ledger.block(block_id).status == FOUND
    assert ledger.pending_submissions() == []
    assert ledger.submission_failed(block_id, "x") == 0  # nothing kept to count on


def test_a_rejected_block_keeps_its_reason_and_credits_nothing(ledger):
    ledger.insert_shares([share(i, ALICE, 900.0 + i) for i in range(10)])
    block_id = record(ledger)
    rejected = ledger.reject_block(block_id, "stale")
    assert (rejected.status, rejected.reason) == (REJECTED, "stale")
    assert ledger.reject_block(block_id, "other") == rejected  # idempotent
    assert ledger.pending_submissions() == [] and ledger.unlockable_blocks() == []
    assert ledger.block_submitted(block_id) is False
    assert ledger.credit_block(block_id, 2.0, 100, None).status == REJECTED
    assert ledger.block_credits(block_id) == {}
    totals = ledger.pool_totals()
    assert (totals.blocks_rejected, totals.blocks_orphaned, totals.immature) == (1, 0, 0)
    (listed,) = ledger.blocks(10)
    assert listed.reason == "stale"
    # A block on chain and credited cannot be rejected.
    credited = record(ledger, 2, submission=None)
    ledger.credit_block(credited, 2.0, 100, None)
    with pytest.raises(LedgerError, match="credited"):
        ledger.reject_block(credited, "stale")


def test_a_pending_submission_survives_a_reopen(target):
    with open_ledger(target) as led:
        block_id = record(led)
        led.submission_failed(block_id, "node down")
    with open_ledger(target) as led:
        (pending,) = led.pending_submissions()
        assert (pending.block.id, pending.submission, pending.attempts) == (block_id, SUBMISSION, 1)


def test_prune_keeps_the_window_of_a_block_waiting_for_the_node(ledger):
    # Each share scores 1/10 of the network difficulty: a window (factor 2) is 20 shares.
    ledger.insert_shares([share(i, ALICE, 1000.0 + i) for i in range(30)])
    record(ledger, t=1025.0)  # its window: shares 6..25
    assert ledger.prune_shares(before=1e12, factor=2.0) == 6
    assert ledger.share_count() == 24


# --- a ledger of schema version 1, migrated -----------------------------------------------


def v1_ledger(target: str) -> None:
    """Schema 1 with a share, a credited block, its credits and a balance, by hand."""
    conn: Any
    if target.startswith("postgresql://"):
        import psycopg

        from pool.ledger.postgres import SCHEMA_V1 as PG_V1

        conn, ddl, ph = psycopg.connect(target, autocommit=True), PG_V1, "%s"
    else:
        from pool.ledger.sqlite import SCHEMA_V1

        conn, ddl, ph = sqlite3.connect(target, isolation_level=None), SCHEMA_V1, "?"
    run = conn.execute
    statements = ddl.split(";")
    try:
        run("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        run("INSERT INTO schema_version (version) VALUES (1)")
        for statement in statements:
            if statement.strip():
                run(statement)
        s = share(1, ALICE, 999.0)
        run(
            "INSERT INTO shares (digest, time, address, worker, job_id, height, difficulty,"
            f" network_difficulty, session_id) VALUES ({', '.join([ph] * 9)})",
            (
                s.digest,
                s.time,
                s.address,
                s.worker,
                s.job_id,
                s.height,
                s.difficulty,
                s.network_difficulty,
                s.session_id,
            ),
        )
        run(
            "INSERT INTO blocks (height, hash, reward, time, address, worker,"
            " network_difficulty, status, fee, remainder, shares_used)"
            f" VALUES ({', '.join([ph] * 11)})",
            (7, b"\x07" * 32, 1000, 1000.0, ALICE, "rig1", 10.0, CREDITED, 10, 0, 1),
        )
        run(
            f"INSERT INTO credits (block_id, address, amount, status) VALUES "
            f"(1, {ph}, 990, 'pending')",
            (ALICE,),
        )
        run(f"INSERT INTO balances (address, amount, since) VALUES ({ph}, 55, 1.0)", (BOB,))
    finally:
        conn.close()


def test_a_schema_1_ledger_is_migrated_with_its_data(target):
    v1_ledger(target)
    with open_ledger(target) as led:
        assert led.schema_version() == SCHEMA_VERSION == 3
        assert led.share_count() == 1
        (block,) = led.blocks(10)
        assert (block.height, block.status, block.reward, block.fee, block.reason) == (
            7,
            CREDITED,
            1000,
            10,
            None,
        )
        assert led.block_credits(block.id) == {ALICE: 990}
        assert led.balances() == {BOB: 55}
        assert led.pool_totals().immature == 990
        # The new state works on the migrated tables.
        pending = record(led, 3)
        assert [p.block.id for p in led.pending_submissions()] == [pending]
    with open_ledger(target) as led:  # reopening migrates nothing twice
        assert led.schema_version() == SCHEMA_VERSION
        assert [p.block.id for p in led.pending_submissions()] == [pending]
