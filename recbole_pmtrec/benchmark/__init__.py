"""The paper's comparison as one command: ``python -m recbole_pmtrec.benchmark --suite smoke|paper|extra``.

Suites live in ``properties/benchmark/<suite>.yaml``; ``suite`` expands them into cells, ``runner`` trains
one cell, ``driver`` runs them resumably into ``<out>/cells/``, ``report`` writes the table, commands and
plots.
"""

from recbole_pmtrec.benchmark.driver import Benchmark, CellStore
from recbole_pmtrec.benchmark.report import write_report
from recbole_pmtrec.benchmark.runner import cell_command, run_cell
from recbole_pmtrec.benchmark.suite import Cell, Suite, load_suite, suites

__all__ = [
    "Benchmark",
    "Cell",
    "CellStore",
    "Suite",
    "cell_command",
    "load_suite",
    "run_cell",
    "suites",
    "write_report",
]
