"""The worker's data-plane URL (SPEC §12.7): an empty host is the stratum host."""

from __future__ import annotations

import pytest

from worker.data_client import DataPlane


@pytest.mark.parametrize(
    ("data", "host", "base"),
    [
        ("http://:8081/data", "pool.example", "http://pool.example:8081/data"),
        ("http://:8081/data/", "::1", "http://[::1]:8081/data"),
        ("https://cdn.example/pool/data", "pool.example", "https://cdn.example/pool/data"),
        ("http://10.0.0.2:80/data", "pool.example", "http://10.0.0.2:80/data"),
    ],
)
def test_the_plane_names_its_host_or_takes_the_stratum_one(data, host, base):
    plane = DataPlane.of(data, "3.abcd", host)
    assert plane.base == base
    assert plane.auth == {"Authorization": "Bearer 3.abcd"}
