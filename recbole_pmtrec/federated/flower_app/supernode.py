"""``flower-supernode`` with a shorter idle poll, for the loopback launcher.

Flower 1.42's SuperNode asks the SuperLink for new messages every 3 s while idle (a fixed ``time.sleep(3)``
in ``flwr.supernode.start_client_internal``): 1.5 s on average, 3 s at worst, added to every message
exchange of a round. Run as a script (``python supernode.py [--poll-seconds S] <flower-supernode args>``, not
imported through the package, whose import loads torch), it is the same SuperNode with that module's
sleeps capped at ``--poll-seconds`` (default 0.5). On other machines plain ``flower-supernode`` works as is.
"""

from __future__ import annotations

import sys
import time

import flwr.supernode.start_client_internal as supernode_loop


class _CappedTime:
    """The ``time`` module, with ``sleep`` capped."""

    def __init__(self, cap: float):
        self.cap = cap

    def __getattr__(self, name: str):
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap))


def main(argv: list[str]) -> None:
    cap = 0.5
    if "--poll-seconds" in argv:
        index = argv.index("--poll-seconds")
        cap = float(argv[index + 1])
        del argv[index : index + 2]
    supernode_loop.time = _CappedTime(cap)
    sys.argv = ["flower-supernode", *argv]
    from flwr.supernode.cli import flower_supernode

    flower_supernode()


if __name__ == "__main__":
    main(sys.argv[1:])
