"""A whole model pass on the OpenCL backend (PoCL in CI): the reference output bit for bit,
one header per layer, every share verifying and the audit passing (SPEC §12.12)."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.audit import Challenge, check_audit
from protocol.model import load_model, reference_pass, save_model
from protocol.model_work import UnitRecord, layer_shape, padded_activation, padded_weights_t
from protocol.ticket import verify_ticket
from protocol.workload import TILE
from tests.support.backend_checks import working_opencl_device
from tests.support.model_data import layer_header, random_inputs, random_model
from worker.autotune import KernelConfig
from worker.backends.opencl import OpenCLBackend, list_opencl_devices
from worker.model_pass import run_unit

pytest.importorskip("pyopencl")
if not list_opencl_devices():
    pytest.skip("no OpenCL platform", allow_module_level=True)

pytestmark = pytest.mark.opencl
DEVICE = working_opencl_device()
SMALL = KernelConfig(bm=16, bn=16, wm=4, wn=4, kc=16, vw=4, acc_float=True)  # fits every layer


class CountingOpenCL(OpenCLBackend):
    """The OpenCL backend, counting the headers it scans."""

    scanned: list[bytes]

    def scan(self, header, share_target, should_stop=lambda: False, want_product=False):
        self.scanned.append(header)
        return super().scan(header, share_target, should_stop, want_product)


def test_model_pass_on_opencl_is_the_reference(tmp_path):
    rng = np.random.default_rng(21)
    model = random_model(rng, (40, 72, 24, 56))
    pool_model = load_model(save_model(model))
    x = random_inputs(rng, 20, 40)
    backend = CountingOpenCL(*DEVICE, cache_dir=tmp_path, config=SMALL)
    backend.scanned = []
    reference = reference_pass(pool_model, x)
    with run_unit(model, x, 64, backend, layer_header, 1 << 256) as outcome:
        assert np.array_equal(outcome.output, reference.output)
        # prepare's self-test scans headers of its own small workload; of the layers' work
        # roots exactly one header each was scanned
        roots = {layer.work_root for layer in outcome.layers}
        mined = [header for header in backend.scanned if header[72:104] in roots]
        assert mined == [layer.header for layer in outcome.layers]
        for index, layer in enumerate(outcome.layers):
            shape = layer_shape(pool_model, index, 20, 64)
            a = padded_activation(reference.activations[index], shape)
            bt = padded_weights_t(pool_model, index, shape)
            assert len(layer.shares) == shape.tiles
            for share in layer.shares:
                ti, tj = share.tile
                assert np.array_equal(share.a_rows, a[ti * TILE : (ti + 1) * TILE])
                rows = bt[tj * TILE : (tj + 1) * TILE]
                assert verify_ticket(layer.header, shape, share.tile, share.a_rows, rows) == (
                    share.digest
                )
        record = UnitRecord(pool_model, x, 64, outcome.a_roots, outcome.output)
        assert record.digest == outcome.commitments
        every = [Challenge(layer, row) for layer in range(model.depth) for row in range(20)]
        check_audit(record, every, outcome.answer(every))
