"""Started by `commscope run`: trace this Python process, then defer to any other sitecustomize."""

import os
import sys

if os.environ.get("COMMSCOPE_OUT"):
    try:
        from commscope.profiler._autorun import start

        start()
    except Exception as exc:  # tracing must never stop the user's program from starting
        print(f"commscope: tracing disabled in this process: {exc!r}", file=sys.stderr)

# Chain to the sitecustomize this one shadows, if any.
_here = os.path.dirname(os.path.abspath(__file__))
for _entry in sys.path:
    if not _entry or os.path.abspath(_entry) == _here:
        continue
    _path = os.path.join(_entry, "sitecustomize.py")
    if os.path.isfile(_path):
        with open(_path) as _fh:
            exec(compile(_fh.read(), _path, "exec"), {"__name__": "sitecustomize", "__file__": _path})
        break
