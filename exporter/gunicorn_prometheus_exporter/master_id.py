"""Who a metrics process works for, handed down as a value: master -> metrics process ->
background tasks -> Redis flusher (nothing below the master reaches back into it)."""
from __future__ import annotations

from typing import NamedTuple, Optional


class MasterId(NamedTuple):
    #: the gunicorn master's pid
    pid: int
    #: the identity the master claimed in the multiprocess directory (``m3``); None where
    #: no master claimed one (a flusher run on its own, as in tests)
    identity: Optional[str]
