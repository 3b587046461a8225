"""The bounds of a job's HTTP data plane on the wire (SPEC §12.7): its URL base and token.

Shared by every job source that names a data plane (``messages.BlobSource``,
``model_messages.ModelSource``), so both check the same rule.
"""

from __future__ import annotations

from .errors import ProtocolError

MAX_DATA_URL = 512
"""Longest data-plane URL base of a job source (SPEC §12.7)."""
MAX_TOKEN = 128
"""Longest per-lease bearer token of a job source."""


def check_data_url(url: str, where: str) -> None:
    """``ProtocolError`` unless ``url`` is an ``http://`` or ``https://`` URL base."""
    if not url.startswith(("http://", "https://")):
        raise ProtocolError(f"{where}.data must be an http:// or https:// URL")
