"""The pool's configuration: one TOML file, every key with a default, CLI flags on top.

Each section is a dataclass whose fields carry their default and help text
(:func:`toolkit.settings.setting`). ``load_config(path, overrides)`` reads the file,
rejects unknown sections and keys with a message naming them, applies ``overrides``
(dotted keys such as ``"stratum.port"``, as the CLI builds them) and validates the result
(``pool.config_rules``). ``default_config_text()`` is the commented default file that
``matmine-pool init-config`` prints, generated from the same fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pool.config_rules import node_config, validate, validate_useful
from pool.config_sections import (
    WORK_PROFILES,
    ChainSection,
    HttpConfig,
    LedgerSection,
    LimitsSection,
    PoolSection,
    RetentionSection,
    StratumConfig,
    UsefulSection,
    VardiffSection,
    WorkSection,
)
from pool.models.settings import ModelJobsConfig
from pool.vardiff import VardiffConfig
from protocol.workload import Shape
from toolkit.settings import (
    ConfigError,
    Style,
    from_dict,
    help_table,
    override,
    read_toml,
    section,
    toml_text,
)

__all__ = [  # the sections, the loader and the rules (pool.config_rules) in one place
    "HELP",
    "WORK_PROFILES",
    "ChainSection",
    "ConfigError",
    "HttpConfig",
    "LedgerSection",
    "LimitsSection",
    "PoolConfig",
    "PoolSection",
    "RetentionSection",
    "StratumConfig",
    "UsefulSection",
    "VardiffSection",
    "WorkSection",
    "apply_overrides",
    "config_from_dict",
    "default_config_text",
    "load_config",
    "node_config",
    "validate",
    "validate_useful",
]

STYLE = Style(sections=True)  # messages name keys as "[stratum] port"


@dataclass
class PoolConfig:
    """The whole configuration; one attribute per TOML section."""

    stratum: StratumConfig = section(StratumConfig)
    http: HttpConfig = section(HttpConfig)
    pool: PoolSection = section(PoolSection)
    vardiff: VardiffSection = section(VardiffSection)
    work: WorkSection = section(WorkSection)
    chain: ChainSection = section(ChainSection)
    ledger: LedgerSection = section(LedgerSection)
    limits: LimitsSection = section(LimitsSection)
    useful: UsefulSection = section(UsefulSection)
    retention: RetentionSection = section(RetentionSection)
    models: ModelJobsConfig = section(ModelJobsConfig)

    @property
    def data_path(self) -> Path:
        return Path(self.pool.data_dir)

    @property
    def ledger_path(self) -> Path:
        return Path(self.ledger.path) if self.ledger.path else self.data_path / "pool.sqlite"

    @property
    def ledger_location(self) -> str | Path:
        """What ``pool.ledger.open_ledger`` opens: the PostgreSQL URL or the SQLite file."""
        return self.ledger.url if self.ledger.kind == "postgres" else self.ledger_path

    def vardiff_config(self) -> VardiffConfig:
        """The ``[vardiff]`` section as the vardiff module's own config."""
        return self.vardiff.vardiff_config()

    def work_shape(self) -> Shape:
        """The job shape: the profile's shape with any of m, n, k, r overridden."""
        base = WORK_PROFILES[self.work.profile]
        return Shape(
            m=self.work.m or base.m,
            n=self.work.n or base.n,
            k=self.work.k or base.k,
            r=self.work.r or base.r,
        )


HELP: dict[str, dict[str, str]] = help_table(PoolConfig)
"""``{section: {key: help}}``, read from the fields (``init-config`` prints each)."""


def config_from_dict(data: dict[str, Any]) -> PoolConfig:
    """Build a ``PoolConfig`` from parsed TOML; unknown sections/keys raise ``ConfigError``."""
    config: PoolConfig = from_dict(PoolConfig, data, style=STYLE)
    validate(config)
    return config


def apply_overrides(config: PoolConfig, overrides: dict[str, Any]) -> PoolConfig:
    """Set dotted keys (``"stratum.port": 4000``) on ``config`` and validate again."""
    changed = override(config, overrides, style=STYLE)
    for f in dataclasses.fields(PoolConfig):  # in place: callers keep their object
        setattr(config, f.name, getattr(changed, f.name))
    validate(config)
    return config


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> PoolConfig:
    """Read ``path`` (None = all defaults), apply ``overrides``, validate."""
    config = config_from_dict(read_toml(path) if path is not None else {})
    return apply_overrides(config, overrides or {})


def default_config_text() -> str:
    """A complete, commented TOML file with every key at its default value."""
    return toml_text(
        PoolConfig(),
        (
            "matmine pool configuration. Every key is optional; shown are the defaults.",
            "CLI flags (matmine-pool serve --help) override what is set here.",
        ),
    )
