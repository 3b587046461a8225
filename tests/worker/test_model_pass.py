"""A whole int8 model pass on a worker backend, every GEMM mined (SPEC §12.12.3–§12.12.6).

The delivered output is ``reference_pass``'s bit for bit; each layer is one scanned header;
every share verifies against the layer's rows as the pool would check it; the commitments
are what the pool recomputes from the delivered roots; the audit passes with the pool's own
weights and catches a faked row.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import trio

from protocol.audit import (
    AuditFailure,
    Challenge,
    audit_seed,
    challenge_count,
    check_audit,
    draw_challenges,
)
from protocol.errors import ProtocolError
from protocol.merkle import RowTree, rows_root, verify_proof
from protocol.model import Model, load_model, reference_pass, save_model
from protocol.model_work import (
    UnitRecord,
    layer_shape,
    padded_activation,
    padded_weights_t,
    weight_roots,
)
from protocol.ticket import mine_header, verify_ticket
from protocol.workload import TILE, Workload, work_root
from tests.support.model_data import layer_header, random_inputs, random_model
from worker.backends.base import ScanResult
from worker.backends.blas import BlasBackend
from worker.model_openings import OpeningsTooLarge, OpeningStore
from worker.model_pass import (
    LayerProductWrong,
    LayerRecord,
    PassStopped,
    UnitOutcome,
    run_unit,
    run_unit_in_thread,
)

R = 64
ROWS = 20  # padded to 32: two tile rows, the last half padding
EVERY_TILE = 1 << 256  # every ticket is a share


class CountingBlas(BlasBackend):
    """The BLAS backend, counting the headers it scans and the products it computes."""

    def __init__(self) -> None:
        super().__init__(threads=1)
        self.scanned: list[bytes] = []
        self.products = 0

    def scan(self, header, share_target, should_stop=lambda: False, want_product=False):
        self.scanned.append(header)
        return super().scan(header, share_target, should_stop, want_product)

    def product(self, header):
        self.products += 1
        return super().product(header)


class CorruptingBlas(BlasBackend):
    """A faulty device: one entry of every product it returns is off by one."""

    def scan(self, header, share_target, should_stop=lambda: False, want_product=False):
        result = super().scan(header, share_target, should_stop, want_product)
        assert result.product is not None
        result.product[3, 5] += 1
        return ScanResult(result.winners, result.macs, result.complete, result.product)


@pytest.fixture(scope="module")
def model() -> Model:
    """40 → 72 → 24 → 56: every width forces padding (k' = 128 at r = 32, n' = 80, 32, 64)."""
    return random_model(np.random.default_rng(7), (40, 72, 24, 56))


@pytest.fixture(scope="module")
def pool_model(model) -> Model:
    """The pool's own copy of the weights, read back from the registered file."""
    return load_model(save_model(model))


@pytest.fixture(scope="module")
def x(model) -> np.ndarray:
    return random_inputs(np.random.default_rng(8), ROWS, model.input_width)


def check_unit(outcome: UnitOutcome, pool_model: Model, x: np.ndarray, scanned: list[bytes]):
    """Everything the pool can check of a delivered unit, against the reference."""
    reference = reference_pass(pool_model, x)
    assert outcome.output.dtype == reference.output.dtype
    assert np.array_equal(outcome.output, reference.output)
    assert [layer.header for layer in outcome.layers] == scanned  # one header per layer
    b_roots = weight_roots(pool_model, R)
    for index, layer in enumerate(outcome.layers):
        shape = layer_shape(pool_model, index, ROWS, R)
        a = padded_activation(reference.activations[index], shape)
        bt = padded_weights_t(pool_model, index, shape)
        assert layer.shape == shape and layer.a_root == rows_root(a)
        assert layer.b_root == b_roots[index]
        assert layer.work_root == work_root(shape, layer.a_root, b_roots[index])
        assert layer.header[72:104] == layer.work_root
        assert layer.macs == shape.m * shape.n * shape.k
        assert layer.useful_macs == ROWS * pool_model.layers[index].macs_per_row
        for share in layer.shares:
            ti, tj = share.tile
            rows = slice(ti * TILE, (ti + 1) * TILE)
            assert np.array_equal(share.a_rows, a[rows])
            for offset, proof in enumerate(share.proofs):
                row = share.a_rows[offset].tobytes()
                assert verify_proof(row, ti * TILE + offset, list(proof), layer.a_root)
            bt_rows = bt[tj * TILE : (tj + 1) * TILE]
            assert verify_ticket(layer.header, shape, share.tile, share.a_rows, bt_rows) == (
                share.digest
            )
    assert outcome.a_roots == tuple(layer.a_root for layer in outcome.layers[1:])
    record = UnitRecord(pool_model, x, R, outcome.a_roots, outcome.output)
    assert record.unit_id == outcome.unit_id
    assert record.output_hash == outcome.output_hash
    assert record.digest == outcome.commitments
    return record


def test_pass_is_the_reference_bit_for_bit_and_every_share_verifies(model, pool_model, x):
    backend = CountingBlas()
    with run_unit(model, x, R, backend, layer_header, EVERY_TILE) as outcome:
        check_unit(outcome, pool_model, x, backend.scanned)
        assert len(backend.scanned) == model.depth and backend.products == 0
        tiles = sum(layer.shape.tiles for layer in outcome.layers)
        assert outcome.shares == tiles  # every tile met the target and passed the re-check
        assert all(layer.rejected == 0 for layer in outcome.layers)
        assert outcome.macs == sum(layer.shape.macs_per_header for layer in outcome.layers)


def test_raw_int32_last_layer_and_a_share_target_some_tiles_meet():
    rng = np.random.default_rng(11)
    model = random_model(rng, (200, 48, 33), raw_last=True)
    x = random_inputs(rng, 37, 200)
    reference = reference_pass(model, x)
    target = (1 << 255) // (TILE * TILE * 256)  # about half the tickets of k' = 256 win
    backend = CountingBlas()
    with run_unit(model, x, R, backend, layer_header, target) as outcome:
        assert outcome.output.dtype == np.int32
        assert np.array_equal(outcome.output, reference.output)
        for index, layer in enumerate(outcome.layers):
            shape = layer.shape
            workload = Workload(
                shape,
                padded_activation(reference.activations[index], shape),
                padded_weights_t(model, index, shape),
            )
            expected = mine_header(layer.header, workload).winners(target, shape.k)
            assert [(*s.tile, s.digest) for s in layer.shares] == expected
        assert 0 < outcome.shares < sum(layer.shape.tiles for layer in outcome.layers)


def test_audit_accepts_an_honest_unit(model, pool_model, x):
    with run_unit(model, x, R, CountingBlas(), layer_header, EVERY_TILE) as outcome:
        record = UnitRecord(pool_model, x, R, outcome.a_roots, outcome.output)
        drawn = draw_challenges(pool_model, ROWS, audit_seed(bytes(range(32)), record.digest), 30)
        assert len(drawn) >= challenge_count(pool_model, ROWS)
        check_audit(record, drawn, outcome.answer(drawn))
        every = [Challenge(layer, row) for layer in range(model.depth) for row in range(ROWS)]
        check_audit(record, every, outcome.answer(every))


def fake_row(outcome: UnitOutcome, index: int, row: int, width: int) -> OpeningStore:
    """A worker that commits ``A_index`` with one row's ``width`` real entries made up."""
    fake = OpeningStore(outcome.openings.depth, outcome.openings.rows)
    for kept in outcome.openings.layers:
        padded = np.array(outcome.openings.matrix(kept))
        if kept == index:
            real = padded[row, :width]
            padded[row, :width] = np.where(real == 0, 1, 0)  # surely not the honest row
        fake.keep(kept, padded, RowTree(padded))
    return fake


def test_audit_catches_a_faked_row_when_it_is_challenged(model, pool_model, x):
    with (
        run_unit(model, x, R, CountingBlas(), layer_header, EVERY_TILE) as outcome,
        fake_row(outcome, 2, 5, model.layers[2].k) as fake,
    ):
        roots = tuple(fake.root(index) for index in fake.layers)
        record = UnitRecord(pool_model, x, R, roots, outcome.output)
        honest = [Challenge(0, 5), Challenge(1, 4), Challenge(2, 6)]
        check_audit(record, honest, fake.answer_all(honest))  # other pairs still hold
        for forced in (Challenge(1, 5), Challenge(2, 5)):  # into and out of the fake
            with pytest.raises(AuditFailure, match="row is not layer"):
                check_audit(record, [forced], fake.answer_all([forced]))
        # the honest openings do not match the faked roots either
        with pytest.raises(AuditFailure, match="committed root"):
            check_audit(record, [Challenge(1, 5)], outcome.answer([Challenge(1, 5)]))


def test_openings_spill_to_disk_beyond_the_memory_bound(model, pool_model, x, tmp_path):
    spill = tmp_path / "openings"
    with run_unit(
        model, x, R, CountingBlas(), layer_header, EVERY_TILE, openings_memory=0, spill_dir=spill
    ) as outcome:
        assert outcome.openings.bytes_in_memory == 0
        assert outcome.openings.bytes_on_disk > 0 and any(spill.rglob("*.npy"))
        record = UnitRecord(pool_model, x, R, outcome.a_roots, outcome.output)
        every = [Challenge(layer, row) for layer in range(model.depth) for row in range(ROWS)]
        check_audit(record, every, outcome.answer(every))
    assert not any(spill.rglob("*.npy"))  # closed: the files are gone
    crashed = run_unit(
        model, x, R, CountingBlas(), layer_header, EVERY_TILE, openings_memory=0, spill_dir=spill
    )
    assert any(spill.rglob("*.npy"))  # never closed: a worker that crashed
    assert OpeningStore.remove_leftovers(spill) == 1 and not any(spill.iterdir())
    assert crashed.openings.layers == (1, 2)
    with pytest.raises(OpeningsTooLarge, match="no spill directory"):
        run_unit(model, x, R, CountingBlas(), layer_header, EVERY_TILE, openings_memory=0)


def test_a_wrong_product_is_never_committed(model, x):
    with pytest.raises(LayerProductWrong, match="layer 0"):
        run_unit(model, x, R, CorruptingBlas(threads=1), layer_header, EVERY_TILE)


def test_should_stop_drops_the_pass_in_the_scan(model, x):
    polls = []

    def stop_after_layer_one() -> bool:
        polls.append(None)
        return len(backend.scanned) >= 2

    backend = CountingBlas()
    with pytest.raises(PassStopped) as stopped:
        run_unit(model, x, R, backend, layer_header, EVERY_TILE, stop_after_layer_one)
    assert stopped.value.layer == 1 and len(backend.scanned) == 2
    assert stopped.value.macs >= layer_shape(model, 0, ROWS, R).macs_per_header


async def test_run_unit_in_a_thread_streams_each_layer_as_it_is_done(model, pool_model, x):
    backend = CountingBlas()
    limiter = trio.CapacityLimiter(1)
    send, receive = trio.open_memory_channel[tuple[LayerRecord, int]](model.depth)
    seen: list[tuple[int, int]] = []  # (layer, headers scanned when its record was handed over)

    def on_layer(record: LayerRecord) -> None:
        trio.from_thread.run_sync(send.send_nowait, (record, len(backend.scanned)))

    async def collect() -> None:
        async for record, scanned in receive:
            seen.append((record.index, scanned))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect)
        outcome = await run_unit_in_thread(
            model, x, R, backend, layer_header, EVERY_TILE, limiter, on_layer=on_layer
        )
        send.close()
    with outcome:
        check_unit(outcome, pool_model, x, backend.scanned)
        assert [index for index, _ in seen] == list(range(model.depth))
        # each record is handed over before the next layer is scanned, not all at the end
        assert all(scanned == index + 1 for index, scanned in seen)
    assert limiter.borrowed_tokens == 0


def test_bad_inputs_are_one_line_errors(model, x):
    backend = CountingBlas()
    with pytest.raises(ProtocolError, match="the model takes 40"):
        run_unit(model, x[:, :30], R, backend, layer_header, EVERY_TILE)
    with pytest.raises(ProtocolError, match="r must be one of"):
        run_unit(model, x, 48, backend, layer_header, EVERY_TILE)

    def other_root(layer: int, root: bytes) -> bytes:
        return layer_header(layer, bytes(32))

    with pytest.raises(ValueError, match="layer 0: the header is not one of its work root"):
        run_unit(model, x, R, backend, other_root, EVERY_TILE)
    assert backend.scanned == []


class LongScanBlas(BlasBackend):
    """A scan that lasts until ``should_stop`` says so (at most 10 s)."""

    stopped_by_flag = False

    def scan(self, header, share_target, should_stop=lambda: False, want_product=False):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if should_stop():
                self.stopped_by_flag = True
                return ScanResult([], 0, False)
            time.sleep(0.005)
        return ScanResult([], 0, False)


async def test_cancelling_the_thread_stops_the_scan(model, x):
    backend = LongScanBlas(threads=1)
    limiter = trio.CapacityLimiter(1)
    with trio.move_on_after(0.2) as scope:
        await run_unit_in_thread(model, x, R, backend, layer_header, EVERY_TILE, limiter)
    assert scope.cancelled_caught
    with trio.fail_after(5):  # the abandoned thread stops at its next poll, freeing the device
        while limiter.borrowed_tokens:
            await trio.sleep(0.01)
    assert backend.stopped_by_flag
