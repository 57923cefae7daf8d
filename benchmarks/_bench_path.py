"""Imported first by every benchmark script run as `python benchmarks/NAME.py`.

Python puts the script's folder first on sys.path; this replaces it with the repository root, so
`benchmarks.*` (shared helpers such as `benchmarks._utilisation`) and `registry`, `evaluator`,
`dashboard` and `evalboard` import from the checkout, and no benchmark's name can shadow a module
of the standard library.
"""

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
