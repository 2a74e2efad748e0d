"""Where a study's figures and tables go, written so that none is ever half-written, each with
the parameters that made it.

A table is ``<name>.csv`` (values to 6 significant digits) and ``<name>.md``; a figure is
``<name>.png`` and ``<name>.pdf`` with the plotted numbers in ``<name>.csv``; every output gets
``provenance/<name>.json`` (the notebook, its resolved parameters, the study's settings).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

from .. import __version__
from ..errors import TiesnbError
from ..io import atomic_path, write_json
from .config import StudyConfig


class Outputs:
    def __init__(self, config: StudyConfig, figures_dir: Path, run_dir: Path):
        self.config = config
        self.figures_dir = figures_dir
        self.run_dir = run_dir

    def path(self, name: str) -> Path:
        return self.figures_dir / name

    def results_path(self, name: str) -> Path:
        """A file of intermediate results under the run folder (not a figure)."""
        return self.run_dir / "results" / name

    def provenance(self, name: str, notebook: str, params: Mapping[str, Any]) -> None:
        """Record how an output was made: the notebook, its resolved parameters, the study's."""
        write_json(self.figures_dir / "provenance" / f"{name}.json",
                   {"output": name, "notebook": notebook, "parameters": dict(params),
                    "study": asdict(self.config), "tiesnb": __version__})

    def save_data(self, df, name: str) -> Path:
        """``<name>.csv`` in the figures folder (``name`` may hold a subfolder), atomically."""
        path = self.path(f"{name}.csv")
        with atomic_path(path) as tmp:
            df.to_csv(tmp, index=False, float_format="%.6g")
        return path

    def save_table(self, df, name: str, notebook: str, params: Mapping[str, Any], caption: str = "",
                   floatfmt: str = ".1f", markdown: str | None = None) -> Path:
        """``<name>.csv`` and ``<name>.md``, atomically, with provenance (``markdown``: the
        table's Markdown, if not the plain rendering of ``df``)."""
        from ..tables import plain_markdown

        self.figures_dir.mkdir(parents=True, exist_ok=True)
        self.save_data(df, name)
        md = markdown if markdown is not None else plain_markdown(df, int(floatfmt.strip(".f")))
        with atomic_path(self.path(f"{name}.md")) as tmp:
            tmp.write_text((f"{caption}\n\n" if caption else "") + md + "\n")
        self.provenance(name, notebook, params)
        return self.path(f"{name}.md")

    def save_figure(self, fig, name: str, notebook: str, params: Mapping[str, Any], data) -> Path:
        """``<name>.png`` and ``<name>.pdf``, atomically, the parameters in their metadata, and
        ``<name>.csv``: the plotted numbers (``data``, a DataFrame)."""
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        if data is None or len(data) == 0:
            raise TiesnbError(f"figure {name}: no data to write beside it")
        self.save_data(data, name)
        desc = json.dumps({"notebook": notebook, "parameters": dict(params), "study": self.config.name}, default=str)
        # no creation date in the PDF: the same figure gives the same bytes
        for ext, meta in (("png", {"Description": desc}),
                          ("pdf", {"Subject": desc, "Creator": f"tiesnb {__version__}", "CreationDate": None})):
            with atomic_path(self.path(f"{name}.{ext}")) as tmp:
                fig.savefig(tmp, format=ext, bbox_inches="tight", dpi=200, metadata=meta)
        self.provenance(name, notebook, params)
        return self.path(f"{name}.png")
