"""Small helpers any matmine program may use; this package imports nothing of ours.

- :mod:`toolkit.settings` — settings as dataclasses: defaults, help and bounds on each
  field; one loader for TOML and command-line overrides; generated ``init-config`` text.
- :mod:`toolkit.sqlite` — open a SQLite file with the house pragmas, transactions,
  versioned migrations.
"""
