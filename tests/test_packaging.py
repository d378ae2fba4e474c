"""One import namespace: what a user gets from `pip install`, and what importing costs.

- `import commscope.analysis` / `commscope.dashboards` / NCCL-log parsing never import torch.
- The wheel holds one top-level package, `commscope` (nothing named profiler/analysis/dashboards).
- The everyday API on `commscope` is the subpackages' own objects.
- No import cycles between commscope's modules (module-level imports).
- A wheel installed in a fresh venv outside the checkout runs `commscope demo`.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_DIRS = {"commscope": "commscope", "commscope.profiler": "profiler",
                "commscope.analysis": "analysis", "commscope.dashboards": "dashboards"}


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd="/")


@pytest.mark.parametrize("stmt", [
    "import commscope.analysis",
    "import commscope.dashboards",
    "import commscope",
    "from commscope.profiler import parse_nccl_logs, parse_nccl_tests",
    "import commscope; commscope.load_events; commscope.write_report",
])
def test_offline_analysis_does_not_import_torch(stmt):
    r = _fresh(f"{stmt}\nimport sys\nprint(sorted(m for m in sys.modules "
               f"if m == 'torch' or m.startswith('torch.')))")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_top_level_api_is_the_subpackages_objects():
    import commscope
    from commscope import analysis, dashboards, profiler

    assert commscope.trace is profiler.trace
    assert commscope.phase is profiler.phase
    assert commscope.label_group is profiler.label_group
    assert commscope.load_events is analysis.load_events
    assert commscope.write_report is dashboards.write_report
    with pytest.raises(AttributeError):
        commscope.no_such_name  # noqa: B018


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)
    top, rest = rel.split(os.sep, 1)
    pkg = next(k for k, v in PACKAGE_DIRS.items() if v == top)
    parts = rest[:-3].split(os.sep)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([pkg, *parts])


def _module_level_imports(path: str, name: str) -> set[str]:
    """Intra-commscope modules imported at module level (not inside functions)."""
    with open(path) as fh:
        tree = ast.parse(fh.read(), path)
    is_pkg = path.endswith("__init__.py")
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out = set()
    for node in tree.body:
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                anchor = base[:len(base) - node.level + 1]
                mod = ".".join([*anchor, mod] if mod else anchor)
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        out |= {t for t in targets if t == "commscope" or t.startswith("commscope.")}
    return out


def test_no_import_cycles():
    modules = {}
    for top in PACKAGE_DIRS.values():
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith(".py") and "_bootstrap" not in dirpath:
                    p = os.path.join(dirpath, f)
                    modules[_module_name(p)] = p
    graph = {m: {t for t in _module_level_imports(p, m) if t in modules and t != m}
             for m, p in modules.items()}
    # A package's __init__ importing its own submodules is not a cycle; a submodule importing
    # back into a package __init__ that imports it is.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                if not all(c == cycle[0] or c.startswith(cycle[0] + ".") for c in cycle):
                    pytest.fail("import cycle: " + " -> ".join(cycle))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert "commscope.analysis._load" in graph  # the walk saw the mapped folders


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    import shutil

    # Build from a copy of what the wheel is made of: a build in the checkout would leave an
    # egg-info folder there (which then shadows the installed entry points).
    src = tmp_path_factory.mktemp("src")
    for name in (*PACKAGE_DIRS.values(), "pyproject.toml", "README.md"):
        p = os.path.join(ROOT, name)
        if os.path.isdir(p):
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(p, src / name)
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                        str(src)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.fail(f"building the wheel failed:\n{r.stdout}\n{r.stderr}")
    (whl,) = [os.path.join(out, f) for f in os.listdir(out) if f.endswith(".whl")]
    return whl


def test_wheel_installs_one_top_level_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"commscope"}
    for must in ("commscope/profiler/_schema.py", "commscope/analysis/_load.py",
                 "commscope/dashboards/_report.py", "commscope/models/llama.py",
                 "commscope/profiler/_bootstrap/sitecustomize.py", "commscope/cli/__init__.py"):
        assert must in names


def test_wheel_in_fresh_venv_runs_the_demo(wheel, tmp_path):
    """Install the wheel into a venv outside the checkout and run `commscope demo` there.

    The venv borrows this environment's dependencies (torch, pandas, ...) through a path entry
    (a plain path, so the editable install's finder in that site-packages is not activated);
    commscope itself comes only from the wheel.
    """
    import sysconfig

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    vpy = str(venv / "bin" / "python")
    site = subprocess.run([vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "deps.pth"), "w") as fh:
        fh.write(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", vpy, "install", "-q",
                        "--no-deps", wheel], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    where = subprocess.run([vpy, "-c", "import commscope; print(commscope.__file__)"],
                           capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert where.stdout.strip().startswith(site), where.stdout + where.stderr
    out = tmp_path / "demo"
    r = subprocess.run([str(venv / "bin" / "commscope"), "demo", "--out", str(out)],
                       capture_output=True, text=True, cwd=str(tmp_path), timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (out / "report.html").stat().st_size > 100_000
