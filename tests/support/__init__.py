"""Shared parts of the tests: real clients, pools, servers and data.

No test module imports another; what two test modules share lives here.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the repository's root
