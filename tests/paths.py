"""Where the tests find their data: ../shared/traces (real traces, read-only) and tests/fixtures.

A module of its own (not conftest.py): tests/engine has a conftest too, and `from conftest import`
would pick whichever of the two was imported first.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HYBRIDSCOPE_SHARED", ROOT.parent / "shared"))
TRACES = SHARED / "traces"
EXTERNAL = TRACES / "external"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
