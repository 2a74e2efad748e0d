"""Every path the project reads or writes, from one place.

Rooted at the repository (the folder above this package); each can be moved with an environment
variable, so nothing in the code or the notebooks names a machine-specific path.

| name       | default                 | override           | holds                                   |
|------------|-------------------------|--------------------|-----------------------------------------|
| ROOT       | the repository          | TIESNB_ROOT        |                                         |
| DATA_CACHE | ROOT/.cache/data        | TIESNB_DATA        | downloaded package files (data, models) |
| RUNS       | ROOT/runs               | TIESNB_RUNS        | checkpoints, results, executed notebooks|
| FIGURES    | ROOT/figures            | TIESNB_FIGURES     | figures and tables of the study         |
| PARAMS     | ROOT/params             | TIESNB_PARAMS      | the studies' parameter files            |
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def _env_path(var: str, default: Path) -> Path:
    value = os.environ.get(var)
    return Path(value).expanduser().resolve() if value else default


ROOT = _env_path("TIESNB_ROOT", PACKAGE.parent)
DATA_CACHE = _env_path("TIESNB_DATA", ROOT / ".cache" / "data")
RUNS = _env_path("TIESNB_RUNS", ROOT / "runs")
FIGURES = _env_path("TIESNB_FIGURES", ROOT / "figures")
NOTEBOOKS = ROOT / "notebooks"
PARAMS = _env_path("TIESNB_PARAMS", ROOT / "params")

