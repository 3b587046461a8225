"""The ledger on both stores: durable shares, block credit/confirm/orphan, payment batches.

Every behaviour runs on SQLite (a real file) and on PostgreSQL (a real server started once
for the session by ``tests/pg.py``, a fresh database per test); what only one store has
(WAL files, server restarts, two pools on one database) is tested on that one.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from pool.ledger import (
    CANCELLED,
    COMPLETED,
    CONFIRMED,
    CREDITED,
    FOUND,
    ORPHANED,
    PENDING,
    Ledger,
    LedgerError,
    SqliteLedger,
    open_ledger,
)
from pool.ledger.sql import SCHEMA_VERSION
from pool.pplns import ShareScore, pplns_split
from tests.support import pg
from tests.support.ledger_data import ALICE, BOB, share

CAROL = "mmd1" + "c" * 48
FEE = "mmd1" + "f" * 48


class Store:
    """One test's ledger store; ``open()`` makes a new ``Ledger`` on it (a reopen)."""

    def __init__(self, backend: str, target: str) -> None:
        self.backend = backend
        self.target = target

    def open(self) -> Ledger:
        return open_ledger(self.target)

    def execute(self, sql: str) -> None:
        """Run ``sql`` on a connection of its own, committed, bypassing the ledger."""
        if self.backend == "sqlite":
            raw = sqlite3.connect(self.target)
            raw.execute(sql)
            raw.commit()
            raw.close()
        else:
            import psycopg

            with psycopg.connect(self.target, autocommit=True) as raw:
                raw.execute(sql)


@pytest.fixture(params=pg.BACKENDS)
def store(request, tmp_path) -> Store:
    return Store(request.param, pg.ledger_target(request.param, request.config, tmp_path))


@pytest.fixture
def ledger(store):
    with store.open() as led:
        yield led


def test_file_is_wal_with_schema_version(tmp_path):
    path = tmp_path / "pool.sqlite"
    SqliteLedger(path).close()
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    names = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "shares_by_time" in names
    raw.close()
    with SqliteLedger(path) as led:  # reopening does not re-create anything
        assert led.schema_version() == SCHEMA_VERSION


def test_newer_schema_is_refused(store):
    store.open().close()
    store.execute("INSERT INTO schema_version (version) VALUES (99)")
    with pytest.raises(LedgerError, match="schema version 99"):
        store.open()


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(ValueError):
        SqliteLedger(tmp_path / "x.sqlite", synchronous="sometimes")
    with pytest.raises(ValueError):
        SqliteLedger(":memory:")


def test_shares_survive_reopen_and_duplicates_are_ignored(store):
    shares = [share(i, ALICE if i % 2 else BOB, 1000.0 + i) for i in range(200)]
    with store.open() as led:
        assert led.insert_shares(shares[:150]) == 150
        assert led.insert_shares([]) == 0
    with store.open() as led:
        assert led.share_count() == 150
        # A replay after a crash overlaps what is stored: only the new ones count.
        assert led.insert_shares(shares[100:]) == 50
        assert led.insert_shares([shares[0], shares[0]]) == 0
        assert led.share_count() == 200
        stats = {(s.address, s.worker): s for s in led.share_stats(since=0)}
        assert sum(s.shares for s in stats.values()) == 200
        assert sum(s.difficulty for s in stats.values()) == pytest.approx(200.0)
        assert stats[(ALICE, "rig1")].last_time == max(
            s.time for s in shares if s.address == ALICE and s.worker == "rig1"
        )
        assert sum(s.shares for s in led.share_stats(since=1150.0)) == 50


def test_bad_share_rejects_batch_and_loses_nothing(ledger):
    good = [share(i, ALICE, float(i)) for i in range(5)]
    ledger.insert_shares(good)
    bad = [share(10, ALICE, 10.0), share(11, ALICE, 11.0, difficulty=-1.0)]
    with pytest.raises(ValueError):
        ledger.insert_shares(bad)
    with pytest.raises(ValueError):
        ledger.insert_shares([share(12, ALICE, 12.0, network=0.0)])
    with pytest.raises(ValueError):
        ledger.insert_shares([share(13, "", 13.0)])
    assert ledger.share_count() == 5


CHILD = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    from pool.ledger import ShareRecord, open_ledger

    def batch_of(start, count):
        return [
            ShareRecord((start + i).to_bytes(32, "little"), float(start + i),
                        "mmd1" + "a" * 48, "w", "j", 1, 1.0, 2.0, b"s")
            for i in range(count)
        ]

    led = open_ledger(sys.argv[1])
    for batch in range(5):
        led.insert_shares(batch_of(batch * 100, 100))
        print("ack", batch, flush=True)      # the pool acknowledges only after return
    # A big batch in flight when the process dies: stored whole or not at all.
    big = batch_of(10_000, 5000)
    threading.Thread(target=led.insert_shares, args=(big,), daemon=True).start()
    time.sleep(0.02)
    os.kill(os.getpid(), signal.SIGKILL)      # no close, no checkpoint, no cleanup
    """
)


def test_acknowledged_shares_survive_sigkill(store):
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, store.target],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout.split() == [w for b in range(5) for w in ("ack", str(b))], proc.stderr
    if store.backend == "sqlite":  # the data lives in the WAL, not checkpointed
        assert os.path.exists(store.target + "-wal")
    with store.open() as led:
        assert led.share_count() in (500, 5500)
        assert led.insert_shares([share(i, ALICE, float(i)) for i in range(500)]) == 0


def test_concurrent_threads_are_safe(ledger):
    def work(base: int) -> None:
        for j in range(20):
            ledger.insert_shares(
                [share(base + j * 5 + i, ALICE, float(base + j)) for i in range(5)]
            )
            ledger.share_stats(0)

    threads = [threading.Thread(target=work, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ledger.share_count() == 400


def fill(ledger, count=60, network=10.0):
    """Shares of three miners at times 1..count, difficulty varying, plus one later share."""
    shares = [
        share(
            i, (ALICE, BOB, CAROL)[i % 3], float(i + 1), difficulty=0.5 + (i % 4), network=network
        )
        for i in range(count)
    ]
    ledger.insert_shares(shares)
    late = share(10_000, CAROL, 10_000.0, difficulty=1000.0, network=network)
    ledger.insert_shares([late])
    return shares


def expected_split(shares, at, reward, fee_bps, factor):
    window = sorted((s for s in shares if s.time <= at), key=lambda s: -s.time)
    scores = [ShareScore(s.address, s.difficulty, s.network_difficulty) for s in window]
    return pplns_split(scores, reward, fee_bps, factor)


def test_block_credit_then_confirm_makes_balances(store):
    reward = 5_000_000_007
    with store.open() as led:
        shares = fill(led)
        block_id = led.record_block(7, b"\x07" * 32, reward, 60.0, ALICE, "rig0", 10.0)
        assert led.record_block(7, b"\x07" * 32, reward, 60.0, ALICE, "rig0", 10.0) == block_id
        assert led.block(block_id).status == FOUND
        assert [b.id for b in led.unlockable_blocks()] == [block_id]
        with pytest.raises(LedgerError, match="cannot confirm"):
            led.confirm_block(block_id)

        block = led.credit_block(block_id, factor=2.0, fee_bps=150, fee_address=FEE)
        assert block.status == CREDITED
        split = expected_split(shares, 60.0, reward, 150, 2.0)
        assert split.shares_used < 60  # the window is full: older shares are left out
        credits = led.block_credits(block_id)
        assert credits == {**split.credits, FEE: split.fee + split.remainder}
        assert sum(credits.values()) == reward
        assert (block.fee, block.remainder, block.shares_used) == (
            split.fee,
            split.remainder,
            split.shares_used,
        )
        # Crediting again changes nothing (and does not take new parameters).
        assert led.credit_block(block_id, factor=9.0, fee_bps=0, fee_address=None) == block
        assert led.block_credits(block_id) == credits
        assert led.balances() == {}
        assert led.miner(ALICE).immature == credits[ALICE]
        assert led.pool_totals().immature == reward

    with store.open() as led:  # durable across reopen
        assert led.block(block_id).status == CREDITED
        confirmed = led.confirm_block(block_id)
        assert confirmed.status == CONFIRMED
        assert led.confirm_block(block_id).status == CONFIRMED  # idempotent: no double credit
        assert led.balances() == credits
        assert led.unlockable_blocks() == []
        summary = led.miner(ALICE)
        assert (summary.balance, summary.immature, summary.paid) == (credits[ALICE], 0, 0)
        assert summary.workers == {"rig0": 58.0}  # alice: shares 0, 3, .., 57 at t = i + 1
        assert led.payable(credits[ALICE]) == {
            a: v for a, v in credits.items() if v >= credits[ALICE]
        }
        totals = led.pool_totals()
        assert (totals.blocks_found, totals.blocks_confirmed, totals.balances) == (1, 1, reward)
        with pytest.raises(LedgerError, match="cannot orphan"):
            led.orphan_block(block_id)


def test_unfilled_window_and_no_fee_address(ledger):
    ledger.insert_shares([share(1, ALICE, 1.0, 1.0, 100.0), share(2, BOB, 2.0, 3.0, 100.0)])
    block_id = ledger.record_block(1, b"\x01" * 32, 1_000_000, 5.0, BOB, "w", 100.0)
    block = ledger.credit_block(block_id, 2.0, 100, None)
    # The window holds 0.04 of N = 2, and still the whole reward less the fee is paid.
    assert ledger.block_credits(block_id) == {ALICE: 247_500, BOB: 742_500}
    assert (block.fee, block.remainder) == (10_000, 0)
    ledger.confirm_block(block_id)
    assert sum(ledger.balances().values()) == 990_000


def test_block_without_shares_credits_nobody(ledger):
    block_id = ledger.record_block(1, b"\x01" * 32, 1000, 5.0, BOB, "w", 100.0)
    block = ledger.credit_block(block_id, 2.0, 100, FEE)
    assert ledger.block_credits(block_id) == {FEE: 1000}
    assert (block.fee, block.remainder, block.shares_used) == (10, 990, 0)


def test_orphan_voids_credits(ledger):
    fill(ledger)
    block_id = ledger.record_block(9, b"\x09" * 32, 10**9, 60.0, BOB, "w", 10.0)
    ledger.credit_block(block_id, 2.0, 100, FEE)
    assert ledger.orphan_block(block_id).status == ORPHANED
    assert ledger.orphan_block(block_id).status == ORPHANED
    assert ledger.balances() == {}
    assert ledger.payable(1) == {}
    assert ledger.miner(ALICE).immature == 0
    with pytest.raises(LedgerError):
        ledger.confirm_block(block_id)
    assert ledger.credit_block(block_id, 2.0, 100, FEE).status == ORPHANED
    assert ledger.balances() == {}
    assert ledger.pool_totals().blocks_orphaned == 1
    # An uncredited block can be orphaned too; it never gets credits afterwards.
    other = ledger.record_block(10, b"\x0a" * 32, 10**9, 61.0, BOB, "w", 10.0)
    ledger.orphan_block(other)
    ledger.credit_block(other, 2.0, 100, FEE)
    assert ledger.block_credits(other) == {}


def test_unknown_block_and_bad_block_input(ledger):
    with pytest.raises(LedgerError, match="unknown block"):
        ledger.confirm_block(404)
    with pytest.raises(LedgerError, match="unknown block"):
        ledger.credit_block(404, 2.0, 0, None)
    with pytest.raises(ValueError):
        ledger.record_block(1, b"", 10, 1.0, ALICE, "w", 1.0)
    with pytest.raises(ValueError):
        ledger.record_block(1, b"\x01" * 32, -10, 1.0, ALICE, "w", 1.0)
    with pytest.raises(ValueError):
        ledger.record_block(1, b"\x01" * 32, 10, 1.0, ALICE, "w", 0.0)
    block_id = ledger.record_block(1, b"\x01" * 32, 10, 1.0, ALICE, "w", 1.0)
    with pytest.raises(ValueError):
        ledger.credit_block(block_id, 2.0, 10_001, None)
    assert ledger.block(block_id).status == FOUND


def confirmed_balances(ledger, reward=10**9):
    fill(ledger)
    block_id = ledger.record_block(9, b"\x09" * 32, reward, 60.0, BOB, "w", 10.0)
    ledger.credit_block(block_id, 2.0, 100, FEE)
    ledger.confirm_block(block_id)
    return ledger.balances()


def test_payment_batch_debits_before_send_and_completes(ledger):
    balances = confirmed_balances(ledger)
    owed = ledger.pending_payout_total()
    assert owed == sum(balances.values())
    outputs = {ALICE: balances[ALICE], BOB: balances[BOB] - 1}
    batch = ledger.create_payment_batch("k1", outputs)
    assert (batch.status, batch.outputs, batch.txid) == (PENDING, outputs, None)
    # Debited at once, before anything is sent.
    assert ALICE not in ledger.balances()
    assert ledger.balances()[BOB] == 1
    assert ledger.pending_payment_batches() == [batch]
    assert ledger.pending_payout_total() == owed
    assert ledger.miner(ALICE).pending_payment == balances[ALICE]
    # Same key and outputs: the same batch, no second debit. Other outputs: refused.
    assert ledger.create_payment_batch("k1", outputs) == batch
    with pytest.raises(LedgerError, match="already used"):
        ledger.create_payment_batch("k1", {BOB: 1})
    assert ledger.balances()[BOB] == 1

    done = ledger.complete_payment_batch("k1", "tx1")
    assert (done.status, done.txid) == (COMPLETED, "tx1")
    assert ledger.complete_payment_batch("k1", "tx1") == done
    with pytest.raises(LedgerError):
        ledger.complete_payment_batch("k1", "tx-other")
    with pytest.raises(LedgerError):
        ledger.cancel_payment_batch("k1")
    assert ledger.pending_payment_batches() == []
    assert ledger.pending_payout_total() == owed - sum(outputs.values())
    alice = ledger.miner(ALICE)
    assert (alice.balance, alice.paid, alice.pending_payment) == (0, balances[ALICE], 0)
    assert [(p.key, p.amount, p.txid) for p in alice.payments] == [("k1", balances[ALICE], "tx1")]
    assert ledger.pool_totals().paid == sum(outputs.values())
    assert [b.key for b in ledger.payments()] == ["k1"]


def test_oldest_payable_since_tracks_when_a_balance_rose_from_zero(ledger):
    assert ledger.oldest_payable_since(1) is None
    before = time.time()
    balances = confirmed_balances(ledger)
    since = ledger.oldest_payable_since(1)
    assert since is not None and before <= since <= time.time()
    assert ledger.oldest_payable_since(max(balances.values()) + 1) is None
    # Paid down to zero and credited again: the clock restarts.
    ledger.create_payment_batch("k", balances)
    assert ledger.oldest_payable_since(1) is None
    ledger.cancel_payment_batch("k")
    assert ledger.oldest_payable_since(1) > since


def test_overdraft_is_refused_and_changes_nothing(ledger):
    balances = confirmed_balances(ledger)
    with pytest.raises(LedgerError, match="exceeds"):
        ledger.create_payment_batch("k", {ALICE: balances[ALICE], BOB: balances[BOB] + 1})
    with pytest.raises(LedgerError, match="exceeds"):
        ledger.create_payment_batch("k", {"mmd1nobody": 1})
    with pytest.raises(ValueError):
        ledger.create_payment_batch("k", {ALICE: 0})
    with pytest.raises(ValueError):
        ledger.create_payment_batch("k", {})
    with pytest.raises(ValueError):
        ledger.create_payment_batch("", {ALICE: 1})
    assert ledger.balances() == balances
    assert ledger.pending_payment_batches() == []


def test_a_balance_is_never_paid_twice(ledger):
    balances = confirmed_balances(ledger)
    ledger.create_payment_batch("k1", {ALICE: balances[ALICE]})
    with pytest.raises(LedgerError):
        ledger.create_payment_batch("k2", {ALICE: 1})
    assert ALICE not in ledger.payable(1)


def test_cancel_restores_balances(ledger):
    balances = confirmed_balances(ledger)
    ledger.create_payment_batch("k1", {ALICE: balances[ALICE], CAROL: 5})
    cancelled = ledger.cancel_payment_batch("k1")
    assert cancelled.status == CANCELLED
    assert ledger.cancel_payment_batch("k1").status == CANCELLED
    assert ledger.balances() == balances
    with pytest.raises(LedgerError):
        ledger.complete_payment_batch("k1", "tx")
    with pytest.raises(LedgerError, match="unknown payment batch"):
        ledger.cancel_payment_batch("nope")
    assert ledger.miner(ALICE).payments == []


def test_pending_batch_survives_reopen(store):
    with store.open() as led:
        balances = confirmed_balances(led)
        batch = led.create_payment_batch("crash-key", {ALICE: balances[ALICE]})
    with store.open() as led:
        assert led.pending_payment_batches() == [batch]
        assert led.payment_batch("crash-key") == batch
        assert ALICE not in led.balances()
        led.complete_payment_batch("crash-key", "txid")
    with store.open() as led:
        assert led.pending_payment_batches() == []
        assert led.miner(ALICE).paid == balances[ALICE]


def test_prune_keeps_every_share_a_window_needs(ledger):
    # 100 shares at t = 0..99, each scoring 0.1: a window of N = 2 needs the newest 20.
    ledger.insert_shares([share(i, ALICE, float(i), 1.0, 10.0) for i in range(100)])
    # "before" keeps recent history (for stats) even when PPLNS needs less.
    assert ledger.prune_shares(before=50.0, factor=2.0) == 50
    assert ledger.prune_shares(before=1e9, factor=2.0) == 30
    assert ledger.share_count() == 20
    assert ledger.prune_shares(before=1e9, factor=2.0) == 0
    # A block not credited yet pins its own window (t = 80..99), though newer shares
    # (t = 100..129) fill the window of a block found now.
    ledger.insert_shares([share(1000 + i, BOB, 100.0 + i, 1.0, 10.0) for i in range(30)])
    block_id = ledger.record_block(1, b"\x01" * 32, 1000, 99.0, BOB, "w", 10.0)
    assert ledger.prune_shares(before=1e9, factor=2.0) == 0
    ledger.credit_block(block_id, 2.0, 0, None)
    assert ledger.block_credits(block_id) == {ALICE: 1000}
    assert ledger.prune_shares(before=1e9, factor=2.0) == 30  # t = 80..109
    assert ledger.share_count() == 20
    # A larger factor keeps more.
    assert ledger.prune_shares(before=1e9, factor=3.0) == 0


def test_prune_keeps_everything_while_window_is_unfilled(ledger):
    ledger.insert_shares([share(i, ALICE, float(i), 1.0, 100.0) for i in range(50)])
    assert ledger.prune_shares(before=1e9) == 0
    assert ledger.share_count() == 50


def test_closed_ledger_raises(store):
    led = store.open()
    led.close()
    led.close()
    with pytest.raises(LedgerError, match="closed"):
        led.balances()


# --- PostgreSQL only: schema, connection loss, dead server, two pools on one database ---


@pytest.fixture
def pg_url(request) -> str:
    """A fresh database on the session's PostgreSQL server."""
    return pg.postgres_database(request.config)


def wait_for_lock_waiters(url: str, count: int) -> list[int]:
    """Backend pids of ``count`` sessions blocked on a lock in the database at ``url``."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as probe:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = [
                pid
                for (pid,) in probe.execute(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database()"
                ).fetchall()
            ]
            if len(pids) >= count:
                return pids
            time.sleep(0.01)
    raise AssertionError(f"{count} sessions never waited on the lock")


def race_behind_lock(url: str, lock_sql: str, params: tuple, calls: list) -> list:
    """Run each call in a thread while another session holds a row lock they all need.

    The lock is let go only once every call waits on it, inside its own transaction,
    so the calls really overlap. Returns each call's result or exception.
    """
    import psycopg

    results: list = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except Exception as exc:
            results[i] = exc

    with psycopg.connect(url) as holder:
        holder.execute(lock_sql, params)
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
        for t in threads:
            t.start()
        try:
            wait_for_lock_waiters(url, len(calls))
        finally:
            holder.commit()
            for t in threads:
                t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    return results


def test_postgres_schema_is_created_once_by_racing_pools(pg_url):
    import psycopg

    from pool.ledger.postgres import PostgresLedger

    barrier = threading.Barrier(3)
    opened: list = []

    def open_one() -> None:
        barrier.wait(timeout=10)
        try:
            opened.append(PostgresLedger(pg_url))
        except Exception as exc:
            opened.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    try:
        assert all(isinstance(led, PostgresLedger) for led in opened), opened
        assert [led.schema_version() for led in opened] == [SCHEMA_VERSION] * 3
    finally:
        for led in opened:
            if isinstance(led, PostgresLedger):
                led.close()
    with psycopg.connect(pg_url) as raw:
        assert raw.execute("SELECT version FROM schema_version ORDER BY version").fetchall() == [
            (v,) for v in range(1, SCHEMA_VERSION + 1)
        ]  # each version once
        names = {r[0] for r in raw.execute("SELECT indexname FROM pg_indexes").fetchall()}
        assert {"shares_by_time", "payment_outputs_by_address"} <= names
    assert type(open_ledger(pg_url)).__name__ == "PostgresLedger"


def test_postgres_bad_url_and_unreachable_server(pg_url):
    from pool.ledger.postgres import LedgerConnectionError, PostgresLedger

    with pytest.raises(ValueError, match="bad PostgreSQL URL"):
        PostgresLedger("postgresql://127.0.0.1/x?no_such_option=1")
    with pytest.raises(ValueError, match="max_attempts"):
        PostgresLedger(pg_url, max_attempts=0)
    nobody = f"postgresql://postgres:secret@127.0.0.1:{pg.free_port()}/pool"
    with pytest.raises(LedgerConnectionError, match="cannot connect") as info:
        open_ledger(nobody)
    assert "secret" not in str(info.value)
    assert isinstance(info.value, LedgerError)


def test_postgres_two_pools_never_pay_one_balance_twice(pg_url):
    from pool.ledger.postgres import PostgresLedger

    with PostgresLedger(pg_url) as first, PostgresLedger(pg_url) as second:
        balances = confirmed_balances(first)
        results = race_behind_lock(
            pg_url,
            "SELECT 1 FROM balances WHERE address = %s FOR UPDATE",
            (ALICE,),
            [
                lambda: first.create_payment_batch("pool-a", balances),
                lambda: second.create_payment_batch("pool-b", balances),
            ],
        )
        paid = [r for r in results if not isinstance(r, Exception)]
        refused = [r for r in results if isinstance(r, Exception)]
        assert len(paid) == 1 and len(refused) == 1, results
        assert isinstance(refused[0], LedgerError) and "exceeds" in str(refused[0])
        assert paid[0].outputs == balances
        # The loser read the balance before the winner committed: it had to run again.
        assert first.retries + second.retries >= 1
        for led in (first, second):
            assert led.balances() == {}
            assert led.pending_payment_batches() == [paid[0]]
            assert led.pending_payout_total() == sum(balances.values())


def test_postgres_two_pools_never_confirm_one_block_twice(pg_url):
    from pool.ledger.postgres import PostgresLedger

    with PostgresLedger(pg_url) as first, PostgresLedger(pg_url) as second:
        fill(first)
        block_id = first.record_block(9, b"\x09" * 32, 10**9, 60.0, BOB, "w", 10.0)
        results = race_behind_lock(
            pg_url,
            "SELECT 1 FROM blocks WHERE id = %s FOR UPDATE",
            (block_id,),
            [
                lambda: first.credit_block(block_id, 2.0, 100, FEE),
                lambda: second.credit_block(block_id, 2.0, 100, FEE),
            ],
        )
        assert [r.status for r in results] == [CREDITED, CREDITED], results
        credits = first.block_credits(block_id)
        assert sum(credits.values()) == 10**9
        results = race_behind_lock(
            pg_url,
            "SELECT 1 FROM blocks WHERE id = %s FOR UPDATE",
            (block_id,),
            [lambda: first.confirm_block(block_id), lambda: second.confirm_block(block_id)],
        )
        assert [r.status for r in results] == [CONFIRMED, CONFIRMED], results
        assert second.balances() == credits  # credited once, not twice
        assert first.retries + second.retries >= 2  # each race had a loser that ran again


def test_postgres_killed_connection_loses_nothing_committed(pg_url):
    import psycopg

    from pool.ledger.postgres import LedgerConnectionError, PostgresLedger

    with PostgresLedger(pg_url) as led:
        balances = confirmed_balances(led)
        block_id = led.record_block(10, b"\x0a" * 32, 10**6, 61.0, BOB, "w", 10.0)
        led.credit_block(block_id, 2.0, 100, FEE)
        outcome: list = []

        def confirm() -> None:
            try:
                outcome.append(led.confirm_block(block_id))
            except Exception as exc:
                outcome.append(exc)

        with psycopg.connect(pg_url) as holder:
            holder.execute("SELECT 1 FROM blocks WHERE id = %s FOR UPDATE", (block_id,))
            thread = threading.Thread(target=confirm)
            thread.start()
            try:
                (pid,) = wait_for_lock_waiters(pg_url, 1)
                # The ledger's session dies in the middle of its transaction.
                holder.execute("SELECT pg_terminate_backend(%s)", (pid,))
            finally:
                holder.rollback()
                thread.join(timeout=30)
        assert len(outcome) == 1 and isinstance(outcome[0], LedgerConnectionError), outcome
        assert "lost" in str(outcome[0])
        # The next calls reconnect; what was committed is there, the killed part is not.
        assert led.balances() == balances
        assert led.block(block_id).status == CREDITED
        assert led.confirm_block(block_id).status == CONFIRMED
        assert sum(led.balances().values()) == sum(balances.values()) + 10**6


def test_postgres_dead_server_raises_and_the_ledger_recovers(request):
    server = pg.postgres_server(request.config)  # skips first where PostgreSQL is absent
    from pool.ledger.postgres import LedgerConnectionError, PostgresLedger

    url = server.create_database()
    with PostgresLedger(url) as led:
        balances = confirmed_balances(led)
        batch = led.create_payment_batch("before-crash", {ALICE: balances[ALICE]})
        acked = led.share_count()
        server.stop("immediate")  # a crash: no shutdown checkpoint
        try:
            with pytest.raises(LedgerConnectionError, match=r"PostgreSQL at 127\.0\.0\.1"):
                led.insert_shares([share(50_000, ALICE, 70.0)])
            with pytest.raises(LedgerConnectionError):
                led.complete_payment_batch("before-crash", "tx")
        finally:
            server.start()
        # The same object reconnects by itself; everything acknowledged survived the crash.
        assert led.share_count() == acked
        assert led.pending_payment_batches() == [batch]
        assert led.balances() == {a: v for a, v in balances.items() if a != ALICE}
        assert led.insert_shares([share(50_000, ALICE, 70.0)]) == 1
        assert led.complete_payment_batch("before-crash", "tx").status == COMPLETED
        # A restart while the pool is idle goes unnoticed: the next call reconnects.
        server.stop("fast")
        server.start()
        assert led.share_count() == acked + 1
        assert led.miner(ALICE).paid == balances[ALICE]
