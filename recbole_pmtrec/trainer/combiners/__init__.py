"""Combiners: how per-task gradients become one update (``mtl_method`` in yaml). Importing this package
registers every combiner in ``COMBINERS``."""

from recbole_pmtrec.trainer.combiners import (  # noqa: F401
    aligned_mtl,
    cagrad,
    dwa,
    ew,
    graddrop,
    gradnorm,
    gradvac,
    imtl_g,
    mgda,
    nash_mtl,
    pcgrad,
    pmtrec,
    rlw,
    upgrad,
    uw,
)
from recbole_pmtrec.trainer.combiners.base import COMBINERS, Combiner, build_combiner, register

__all__ = ["COMBINERS", "Combiner", "build_combiner", "register"]
