"""Useful-work queue test data: operands and result uploads through the result desk."""

import numpy as np

from pool.useful.results import Passed
from protocol.useful import chunks


def operands(seed, m, k, n):
    rng = np.random.default_rng(seed)
    return (
        rng.integers(-64, 65, (m, k), dtype=np.int8),
        rng.integers(-64, 65, (k, n), dtype=np.int8),
    )


def upload(desk, lease, session, raw, chunk=4096):
    receipt = None
    for offset, data, final in chunks(raw, chunk):
        receipt = desk.receive(lease, session, lease.unit.unit_id, offset, data, final)
    assert receipt.complete and receipt.received == len(raw)
    return check_and_complete(desk, lease.id, desk.take_upload(lease.id))


def check_and_complete(desk, lease_id, raw):
    """The pool's judgement of a whole result, without the ledger: ``check``, then on a
    pass ``complete`` (``pool.useful.service`` credits the held shares in between)."""
    checked = desk.check(lease_id, raw)
    return desk.complete(checked) if isinstance(checked, Passed) else checked
