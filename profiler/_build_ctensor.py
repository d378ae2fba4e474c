"""Build the optional C++ tensor reader `_ctensor` against the installed torch.

    python -m commscope.profiler._build_ctensor

It needs torch's headers, so it is built once torch is installed (`make setup` runs this), not by
pip's isolated build. It is an optional speedup like the C extensions: without it (no compiler,
another torch) the compiled hook asks torch through Python, with the same results. The module
records the torch version it was built for and is not used by any other.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig

__all__ = ["build"]

_DIR = os.path.dirname(os.path.abspath(__file__))


def build(quiet: bool = False) -> str:
    """Compile `_ctensor.cpp` next to this file; returns the module's path (raises on failure)."""
    import torch
    from torch.utils import cpp_extension

    found = shutil.which("g++") or shutil.which("c++")
    cxx = shlex.split(os.environ.get("CXX", "")) or ([found] if found else [])
    if not cxx:
        raise RuntimeError("no C++ compiler (g++ or c++) on PATH")
    out = os.path.join(_DIR, "_ctensor" + sysconfig.get_config_var("EXT_SUFFIX"))
    tmp = f"{out}.{os.getpid()}.tmp"
    libs = cpp_extension.library_paths()
    cmd = [*cxx, "-O2", "-std=c++20", "-shared", "-fPIC", "-w",
           f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
           f'-DCOMMSCOPE_TORCH_VERSION="{torch.__version__}"',
           f"-I{sysconfig.get_paths()['include']}",
           *(f"-I{p}" for p in cpp_extension.include_paths()),
           os.path.join(_DIR, "_ctensor.cpp"), "-o", tmp,
           *(f"-L{p}" for p in libs), "-lc10", "-ltorch_cpu", "-ltorch_python",
           *(f"-Wl,-rpath,{p}" for p in libs)]
    try:
        subprocess.run(cmd, check=True, capture_output=quiet)
        os.replace(tmp, out)  # a process that has the old module loaded keeps its copy
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


if __name__ == "__main__":
    try:
        print(f"built {build(quiet=True)}")
    except Exception as exc:  # optional: whatever failed, say why and let setup go on
        err = getattr(exc, "stderr", b"") or b""
        print(f"commscope: the optional C++ tensor reader was not built ({exc}); the compiled "
              f"hook asks torch through Python instead.\n{err.decode(errors='replace')[-2000:]}",
              file=sys.stderr)
