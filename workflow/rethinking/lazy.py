"""Modules imported on first use, so that a module can name pandas at its top and still be imported cheaply.

    pd = lazy_module("pandas")   # nothing imported yet
    pd.concat(frames)            # pandas imported here, once

The Snakemake rules and the DVC generator import the modules that declare the tables and figures (for their
file names and captions) but never call them: with a lazy pandas, scipy or seaborn those imports stay out of
every Snakemake start (the scientific-python lazy_loader pattern, without its dependency).
"""

from __future__ import annotations

import importlib
import sys
import types


class _LazyModule(types.ModuleType):
    """Stands for a module until an attribute is asked of it; then imports it and hands the attribute over."""

    def __getattr__(self, attr):
        module = importlib.import_module(self.__name__)
        return getattr(module, attr)

    def __repr__(self):
        return f"<lazy module {self.__name__!r}>"


def lazy_module(name: str) -> types.ModuleType:
    """`name` itself when it is imported already, else a stand-in that imports it on first attribute access."""
    if name in sys.modules:
        return sys.modules[name]
    return _LazyModule(name)
