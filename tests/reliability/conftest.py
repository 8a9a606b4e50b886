"""Fixtures of the fault-injection suite; the helpers live in faultkit.py (a plain module, so its name cannot
clash with the other test folders' conftest modules)."""
from faultkit import *  # noqa: F401,F403  (fixtures must be visible here)
