"""CGC, Customized Gate Control (Tang et al., RecSys 2020, Sec. 4.2): single-level PLE."""

from __future__ import annotations

from recbole_pmtrec.model.ple import PLE


class CGC(PLE):
    """Task-specific and shared experts, one gate per task over its own and the shared experts; no shared
    gate (one level, which is the last)."""

    @classmethod
    def levels_from(cls, config) -> int:
        levels = config["num_levels"]
        if levels not in (None, 1):
            raise ValueError(
                f"CGC is single-level PLE: num_levels must be 1 (got {levels}); use PLE for more"
            )
        return 1
