"""The keep rule of share pruning: no share a PPLNS window can still count is deleted."""

from __future__ import annotations

from pool.ledger.sqlite import SqliteLedger
from pool.pplns import ShareScore, pplns_split
from tests.support.ledger_data import ALICE, BOB, share


def test_share_in_the_window_of_an_uncredited_block_is_never_pruned(tmp_path):
    with SqliteLedger(tmp_path / "l.sqlite") as ledger:
        # 40 shares of ALICE at t = 0..39 (0.1 each), then a block at t = 39 not credited.
        ledger.insert_shares([share(i, ALICE, float(i), 1.0, 10.0) for i in range(40)])
        block_id = ledger.record_block(1, b"\x02" * 32, 1000, 39.0, BOB, "w", 10.0)
        # 40 newer shares of BOB fill the window of a block found now twice over.
        ledger.insert_shares([share(100 + i, BOB, 40.0 + i, 1.0, 10.0) for i in range(40)])
        assert ledger.prune_shares(before=1e9, factor=2.0) == 20  # t = 0..19 only
        credited = ledger.credit_block(block_id, 2.0, 0, None)
        expected = pplns_split([ShareScore(ALICE, 1.0, 10.0)] * 20, 1000, 0, 2.0)
        assert ledger.block_credits(block_id) == expected.credits
        assert credited.shares_used == 20


def test_window_of_a_block_not_yet_recorded_is_kept(tmp_path):
    with SqliteLedger(tmp_path / "l.sqlite") as ledger:
        ledger.insert_shares([share(i, ALICE, float(i), 1.0, 10.0) for i in range(40)])
        ledger.insert_shares([share(100 + i, BOB, 40.0 + i, 1.0, 10.0) for i in range(40)])
        # A block with time 39 may still be on its way to record_block: keep its window.
        assert ledger.prune_shares(before=1e9, factor=2.0, blocks_after=39.0) == 20
        block_id = ledger.record_block(1, b"\x03" * 32, 1000, 39.0, BOB, "w", 10.0)
        ledger.credit_block(block_id, 2.0, 0, None)
        assert ledger.block_credits(block_id) == {ALICE: 1000}
