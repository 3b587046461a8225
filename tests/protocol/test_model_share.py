"""The checks of a layer share (SPEC §12.12.8, §12.12.4 step 4), against layers really mined
with ``protocol.ticket.mine_header`` on ``protocol.model_work.layer_workload``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from protocol.errors import ErrorCode, ProtocolError
from protocol.hashing import H
from protocol.merkle import RowTree, rows_root
from protocol.messages import BlobSource, Notify, Submit, WorkSpec
from protocol.model_share import (
    TileOpening,
    check_layer_share,
    check_submit_fields,
    layer_block,
    row_proofs,
    tile_root,
)
from protocol.target import ticket_difficulty
from protocol.ticket import verify_ticket
from tests.support.model_jobs import (
    EN1,
    Mined,
    Unit,
    batch,
    layer_submit,
    make_model,
    mine_layer,
    share_target,
)

DIFFICULTY = 3e-5  # about a quarter of the tickets of a k' = 128 layer meet it


@pytest.fixture(scope="module")
def unit() -> Unit:
    return Unit(make_model(), batch(20, 40))  # m = 20: tile row 1 holds 12 padding rows


@pytest.fixture(scope="module")
def job(unit: Unit) -> Notify:
    return unit.job(DIFFICULTY)


@pytest.fixture(scope="module")
def mined(unit: Unit, job: Notify) -> list[Mined]:
    return [mine_layer(unit, job, layer, share_target(job)) for layer in range(3)]


def bt_rows(unit: Unit, layer: int, tile: tuple[int, int]) -> np.ndarray:
    return unit.workloads[layer].bt[16 * tile[1] : 16 * tile[1] + 16]


def check(unit: Unit, job: Notify, submit: Submit, layer: int | None = None, **kw):
    layer = submit.layer if layer is None else layer
    assert layer is not None
    return check_layer_share(job, EN1, submit, bt_rows(unit, layer, submit.tile), **kw)


def refused(unit: Unit, job: Notify, submit: Submit, code: int, match: str, **kw) -> None:
    with pytest.raises(ProtocolError, match=match) as caught:
        check(unit, job, submit, **kw)
    assert caught.value.code == code
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_an_honest_layer_share_is_accepted(unit, job, mined, layer) -> None:
    tile = mined[layer].winners[0]
    share = check(unit, job, layer_submit(unit, job, layer, mined[layer], tile))
    w = unit.workloads[layer]
    assert share.head.work_root == w.work_root and share.head.shape == w.shape
    a = w.a[16 * tile[0] : 16 * tile[0] + 16]
    assert share.digest == verify_ticket(
        share.head.header, w.shape, tile, a, bt_rows(unit, layer, tile)
    )


def test_a_layer_0_share_may_leave_the_rows_to_the_pool(unit, job, mined) -> None:
    tile = mined[0].winners[0]
    submit = layer_submit(unit, job, 0, mined[0], tile, with_rows=False)
    pool_a0 = unit.opening(0, tile[0])
    assert check(unit, job, submit, pool_a0=pool_a0).a is pool_a0
    with pytest.raises(ValueError, match="opening of A_0"):
        check(unit, job, submit)


def test_a_losing_ticket_is_low_difficulty(unit, job, mined) -> None:
    submit = layer_submit(unit, job, 1, mined[1], mined[1].losers[0])
    refused(unit, job, submit, ErrorCode.LOW_DIFFICULTY, "difficulty")


def test_wrong_rows_are_refused(unit, job, mined) -> None:
    submit = layer_submit(unit, job, 1, mined[1], mined[1].winners[0])
    rows = bytearray(submit.a_rows or b"")
    rows[130] = (rows[130] + 1) % 64
    bad = dataclasses.replace(submit, a_rows=bytes(rows))
    refused(unit, job, bad, ErrorCode.MALFORMED, "do not open params.a_root")
    other_tile = unit.opening(1, 1 - submit.tile[0])  # genuine rows of the other tile
    moved = dataclasses.replace(submit, a_rows=other_tile.rows.tobytes())
    refused(unit, job, moved, ErrorCode.MALFORMED, "do not open")


def test_a_wrong_proof_is_refused(unit, job, mined) -> None:
    submit = layer_submit(unit, job, 1, mined[1], mined[1].winners[0])
    proof = bytearray(submit.a_proof or b"")
    assert len(proof) == 32  # m' = 32: one level above the tile
    forged = dataclasses.replace(submit, a_proof=H(b"forged sibling"))
    refused(unit, job, forged, ErrorCode.MALFORMED, "do not open")
    refused(unit, job, dataclasses.replace(submit, a_proof=b""), ErrorCode.MALFORMED, "1 hashes")
    long = dataclasses.replace(submit, a_proof=bytes(proof) * 2)
    refused(unit, job, long, ErrorCode.MALFORMED, "a_proof must be 1 hashes")


def hardest(unit: Unit, job: Notify, layer: int, mined: Mined) -> tuple[Submit, Notify]:
    """The best of the header's winning shares, and a job whose difficulty it just meets:
    another header (another ticket) meets that job only by a rare chance."""
    shares = [
        (check(unit, job, s).digest, s)
        for s in (layer_submit(unit, job, layer, mined, t) for t in mined.winners)
    ]
    digest, best = min(shares, key=lambda pair: int.from_bytes(pair[0], "little"))
    hard = dataclasses.replace(
        job, difficulty=ticket_difficulty(digest, unit.workloads[layer].shape.k) * (1 - 1e-9)
    )
    check(unit, hard, best)  # the honest share still meets it
    return best, hard


def test_a_wrong_a_root_for_the_header_is_refused(unit, job, mined) -> None:
    submit, hard = hardest(unit, job, 1, mined[1])
    # Honest rows, another root: they do not open it.
    other_root = unit.workloads[2].a_root
    refused(unit, job, dataclasses.replace(submit, a_root=other_root), 26, "do not open")
    # A self-consistent opening of another activation: the header is another, and so
    # is its ticket (the share was mined on the real a_root_1).
    fake = unit.workloads[1].a.copy()
    fake[0, 0] = -fake[0, 0] if fake[0, 0] else 1
    opening = TileOpening.of(fake, submit.tile[0])
    swapped = dataclasses.replace(
        submit,
        a_root=rows_root(fake),
        a_rows=opening.rows.tobytes(),
        a_proof=opening.proof_bytes,
    )
    refused(unit, hard, swapped, ErrorCode.LOW_DIFFICULTY, "difficulty")


def test_layer_0_must_use_the_units_input(unit, job, mined) -> None:
    submit = layer_submit(unit, job, 0, mined[0], mined[0].winners[0])
    # Layer 1's honest opening under layer 0: a root the pool did not commit.
    opening = unit.opening(1, submit.tile[0])
    other = dataclasses.replace(
        submit,
        a_root=unit.workloads[1].a_root,
        a_rows=opening.rows.tobytes(),
        a_proof=opening.proof_bytes,
    )
    refused(unit, job, other, ErrorCode.MALFORMED, "layer 0 must be the job's a_root")


def test_a_share_named_under_the_wrong_layer_is_refused(unit, job, mined) -> None:
    submit, hard = hardest(unit, job, 2, mined[2])
    # A_2's rows (20 columns) fit layer 1's 24: the header has b_root_1, so the ticket fails.
    as_layer_1 = dataclasses.replace(submit, layer=1)
    refused(unit, hard, as_layer_1, ErrorCode.LOW_DIFFICULTY, "difficulty", layer=1)
    # A_1's rows under layer 2 (20 columns): their 24 columns are not layer 2's padding.
    tile = (mined[1].winners[0][0], 0)
    wide = dataclasses.replace(layer_submit(unit, job, 1, mined[1], tile), layer=2)
    refused(unit, job, wide, 26, "zero beyond layer 2's 20 columns")
    beyond = dataclasses.replace(submit, layer=3)
    refused(unit, job, beyond, 26, "not a layer of the 3-layer", layer=2)


def test_a_tile_is_judged_on_its_layers_grid(unit, job, mined) -> None:
    submit = layer_submit(unit, job, 1, mined[1], mined[1].winners[0])
    assert job.work.shape.tiles_n == 2  # layer 0's grid has tj = 1, layer 2's does not
    off_grid = dataclasses.replace(submit, layer=2, tile=(0, 1))
    refused(unit, job, off_grid, ErrorCode.OTHER, "outside layer 2's 2x1 tiles", layer=1)


def test_time_outside_the_roll_is_refused(unit, job, mined) -> None:
    submit = layer_submit(unit, job, 1, mined[1], mined[1].winners[0])
    refused(unit, job, dataclasses.replace(submit, time=job.time - 1), ErrorCode.BAD_TIME, "time")
    late = dataclasses.replace(submit, time=job.time + 601)
    refused(unit, job, late, ErrorCode.BAD_TIME, "600 s")


def opened_matrix(unit: Unit, layer: int, change) -> tuple[Submit, np.ndarray]:
    """A submit whose opening is consistent with the root of ``change``d padded A."""
    matrix = unit.workloads[layer].a.copy()
    change(matrix)
    opening = TileOpening.of(matrix, 1)
    submit = Submit(
        "job.1", bytes(8), 1_700_000_000, (1, 0), layer, rows_root(matrix),
        opening.rows.tobytes(), opening.proof_bytes,
    )  # fmt: skip
    return submit, matrix


def test_out_of_range_entries_are_refused(unit, job) -> None:
    submit, _ = opened_matrix(unit, 1, lambda a: a.__setitem__((16, 3), 100))
    refused(unit, job, submit, ErrorCode.MALFORMED, r"outside \[-64, 64\]")
    submit, _ = opened_matrix(unit, 1, lambda a: a.__setitem__((17, 0), -65))
    refused(unit, job, submit, ErrorCode.MALFORMED, r"outside \[-64, 64\]")


def test_non_zero_padding_is_refused(unit, job) -> None:
    k1 = unit.model.layers[1].k  # 24 real columns of 128
    submit, _ = opened_matrix(unit, 1, lambda a: a.__setitem__((16, k1), 1))
    refused(unit, job, submit, ErrorCode.MALFORMED, "zero beyond layer 1's 24 columns")
    submit, _ = opened_matrix(unit, 1, lambda a: a.__setitem__((20, 0), 1))  # row 20 ≥ m
    refused(unit, job, submit, ErrorCode.MALFORMED, "the unit's 20 rows")


def test_missing_and_misplaced_model_fields_are_refused(unit, job, mined) -> None:
    submit = layer_submit(unit, job, 1, mined[1], mined[1].winners[0])
    plain = Submit(submit.job_id, submit.extranonce2, submit.time, submit.tile)
    refused(unit, job, plain, ErrorCode.MALFORMED, "needs params.layer and params.a_root", layer=1)
    no_rows = dataclasses.replace(submit, a_rows=None, a_proof=None)
    refused(unit, job, no_rows, ErrorCode.MALFORMED, "layer 1 needs params.a_rows")
    long = dataclasses.replace(submit, a_rows=(submit.a_rows or b"") + bytes(128))
    refused(unit, job, long, ErrorCode.MALFORMED, "must be 16x128 bytes")
    w = unit.workloads[0]
    blob_job = dataclasses.replace(
        job, work=WorkSpec(32, 32, 128, 32, w.a_root, w.b_root, BlobSource(b"a" * 32, b"b" * 32))
    )
    with pytest.raises(ProtocolError, match="only for model jobs") as caught:
        check_submit_fields(blob_job, submit)
    assert caught.value.code == ErrorCode.MALFORMED
    check_submit_fields(blob_job, plain)  # an old miner's submit on a blob job: fine


@pytest.mark.parametrize("rows", [16, 48, 80])
def test_a_tile_opening_is_the_16_row_proofs(rows) -> None:
    matrix = batch(rows, 128, seed=rows)
    tree = RowTree(matrix)
    for ti in range(rows // 16):
        opening = TileOpening.of(matrix, ti, tree)
        assert len(opening.path) == (rows - 1).bit_length() - 4
        assert tile_root(opening, ti) == tree.root
        assert row_proofs(opening) == [tree.proof(16 * ti + i) for i in range(16)]


def test_a_layer_block_carries_both_openings(unit, job, mined) -> None:
    tile = mined[2].winners[0]
    share = check(unit, job, layer_submit(unit, job, 2, mined[2], tile))
    weights = unit.opening(2, tile[1], "B")
    block = layer_block(share, weights)
    w = unit.workloads[2]
    assert (block.shape, block.tile, block.a_root, block.b_root) == (
        w.shape,
        tile,
        w.a_root,
        w.b_root,
    )
    assert block.b_root == job.work.source.layers[2].b_root
    assert block.bt_rows == w.bt[16 * tile[1] : 16 * tile[1] + 16].tobytes()
    assert block.a_proofs == [RowTree(w.a).proof(16 * tile[0] + i) for i in range(16)]
