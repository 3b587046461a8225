"""The rules a pool configuration must satisfy beyond each key's type and bounds.

``validate(config)`` first enforces the bounds written on the fields (``positive``,
``min``/``max``, ``choices``; :func:`toolkit.settings.check_bounds`), then the rules that
tie keys together or need another module: vardiff's own checks, the job shape, the
embedded node's ``[chain.node]`` table, useful work and its tokens, addresses.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import TYPE_CHECKING

from pool.chain.embedded import NodeConfig
from protocol.work_messages import CHUNK_SIZE
from toolkit.settings import ConfigError, check_bounds

if TYPE_CHECKING:
    from pool.config import PoolConfig

LOG_LEVELS = ("debug", "info", "warning", "error")


def validate(config: PoolConfig) -> None:
    """Raise ``ConfigError`` for values that parse but cannot work."""
    check_bounds(config)
    s, p, v = config.stratum, config.pool, config.vardiff
    if s.tls and not (s.tls_cert and s.tls_key):
        raise ConfigError("stratum.tls = true needs stratum.tls_cert and stratum.tls_key")
    try:
        config.vardiff_config()
    except ValueError as exc:
        raise ConfigError(f"[vardiff] {exc}") from None
    if not v.min_difficulty <= p.start_difficulty <= v.max_difficulty:
        raise ConfigError(
            f"pool.start_difficulty {p.start_difficulty:g} must lie within "
            f"[vardiff.min_difficulty, vardiff.max_difficulty] = "
            f"[{v.min_difficulty:g}, {v.max_difficulty:g}]"
        )
    if not 0 < config.limits.invalid_ratio <= 1:
        raise ConfigError("limits.invalid_ratio must be in (0, 1]")
    from pool.jobs import MAX_TAG_BYTES  # every job's coinbase tag adds "/JOB_ID"

    if len(p.tag.encode()) > MAX_TAG_BYTES:
        raise ConfigError(f"pool.tag must be at most {MAX_TAG_BYTES} bytes (UTF-8)")
    if config.ledger.kind == "postgres" and not config.ledger.url.startswith(
        ("postgresql://", "postgres://")
    ):
        raise ConfigError("ledger.kind = postgres needs ledger.url = postgresql://...")
    if p.log_level.lower() not in LOG_LEVELS:
        raise ConfigError("pool.log_level must be debug, info, warning or error")
    try:
        config.work_shape()
    except Exception as exc:  # ProtocolError names the bad dimension
        raise ConfigError(f"[work] shape: {exc}") from None
    if config.chain.kind == "embedded":
        node_config(config)
    validate_useful(config)
    from protocol.address import validate_address

    for name, addr in (
        ("pool.payout_address", p.payout_address),
        ("pool.fee_address", p.fee_address),
    ):
        if addr:
            try:
                validate_address(addr)
            except Exception as exc:
                raise ConfigError(f"{name}: {exc}") from None


def validate_useful(config: PoolConfig) -> None:
    """The ``[useful]`` section: UsefulConfig's rules, the chunk size, the tokens."""
    u = config.useful
    try:
        u.useful_config().validate()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if u.chunk_max < CHUNK_SIZE:
        raise ConfigError(
            f"useful.chunk_max must be at least {CHUNK_SIZE} (the chunk every "
            f"worker may use), got {u.chunk_max}"
        )
    if u.data_url and not u.data_url.startswith(("http://", "https://")):
        raise ConfigError(
            f"useful.data_url must be an http:// or https:// URL base, got {u.data_url!r}"
        )
    if (
        config.http.enabled
        and u.usable(config.stratum.max_frame_size) is None
        and not u.tokens
        and not _is_loopback_host(config.http.host)
    ):
        raise ConfigError(
            f"http.host = {config.http.host!r} is not a loopback address and [useful.tokens] "
            "is empty: the work API would take anyone's work; set [useful.tokens], bind "
            "http.host to 127.0.0.1, or set useful.enabled = false"
        )
    for token, customer in u.tokens.items():
        if not isinstance(customer, str) or not customer or len(token) < 8:
            raise ConfigError(
                '[useful.tokens] entries are TOKEN = "customer name", tokens '
                f"of at least 8 characters; got {token[:4]!r}… = {customer!r:.40}"
            )


def _is_loopback_host(host: str) -> bool:
    """True for "localhost" and loopback IP literals (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def node_config(config: PoolConfig) -> NodeConfig:
    """The embedded node's settings from ``[chain.node]`` (its defaults for what is unset)."""
    known = {f.name for f in dataclasses.fields(NodeConfig)}
    unknown = set(config.chain.node) - known
    if unknown:
        raise ConfigError(
            f"unknown key(s) in [chain.node]: {', '.join(sorted(unknown))} "
            f"(known: {', '.join(sorted(known))})"
        )
    try:
        return NodeConfig(**config.chain.node)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[chain.node] {exc}") from None
