"""Small helpers any matmine program may use; this package imports nothing of ours.

- :mod:`toolkit.sqlite` — open a SQLite file with the house pragmas, transactions,
  versioned migrations.
"""
