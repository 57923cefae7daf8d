"""Imported first by every benchmark script run as `python benchmarks/NAME.py`.

Python puts the script's folder first on sys.path, so `benchmarks/queue.py` would shadow the
standard library's `queue` (which torch, streamlit and multiprocessing import). This drops the
folder from sys.path and puts the repository root there instead, so `registry`, `evaluator`,
`dashboard` and `evalboard` import from the checkout.
"""

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
