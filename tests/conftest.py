"""Test setup: the entry point's XLA flags (one host device per core), set before jax loads."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

import experiments.main  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import
