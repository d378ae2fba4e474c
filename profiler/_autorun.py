"""Process-wide tracing for `commscope run`, configured through environment variables.

COMMSCOPE_OUT (output folder), COMMSCOPE_RUN_ID (shared by every process the command starts,
torchrun's workers included), COMMSCOPE_CAPTURE ("default" or "full").
"""

from __future__ import annotations

import os
import sys

from ._session import TraceSession, trace

__all__ = ["start", "BOOTSTRAP_DIR"]

BOOTSTRAP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bootstrap")
_session: TraceSession | None = None


def start() -> TraceSession:
    """Open a session for the whole process; it is closed at exit or on SIGTERM."""
    global _session
    if _session is None:
        _session = trace(os.environ["COMMSCOPE_OUT"],
                         capture=os.environ.get("COMMSCOPE_CAPTURE", "default"),
                         tags={"command": " ".join(sys.argv), "launched_by": "commscope run"})
        _session.open()
        # Inference engines (vLLM, SGLang) send through their own communicators: hook them in
        # every process the command starts, when (and only if) the engine gets imported.
        from ._engines import install

        install()
    return _session
