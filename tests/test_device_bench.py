"""benchmarks/device_bench.sh, the GPU benchmark's entry on a machine that cannot install anything: it checks
every import before any long work and names what is missing."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_bench.sh"


def _run(tmp_path, extra_path: str | None = None):
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE_WHEELS_DIR": str(tmp_path / "no-wheels"),
           "JAX_PLATFORMS": "cpu"}  # fmt: skip
    env.pop("PYTHONPATH", None)
    if extra_path:
        env["PYTHONPATH"] = extra_path
    return subprocess.run(["bash", str(SCRIPT), "--check"], capture_output=True, text=True, env=env, timeout=300)


def test_check_passes_and_reports_versions(tmp_path):
    r = _run(tmp_path)
    assert r.returncode == 0, r.stderr
    assert "e3nn-jax" in r.stdout and "matscipy" in r.stdout and "jax devices" in r.stdout


def test_a_missing_package_is_named(tmp_path):
    """An interpreter without e3nn-jax and matscipy (as the GPU image is without the carried wheels) stops at the
    check, naming both and what to do."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(
        "import importlib.abc, sys\n"
        "class B(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('e3nn_jax', 'matscipy'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, B())\n"
    )
    r = _run(tmp_path, str(block))
    assert r.returncode != 0
    assert "lacks e3nn-jax, matscipy" in r.stderr and "make device-wheels" in r.stderr


def test_check_covers_every_dependency():
    """The script's import list names every runtime dependency in pyproject.toml (by distribution name), so a
    dependency added there cannot be missed on the device machine."""
    import re
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].lower() for d in deps}
    listed = {d.lower() for d in re.findall(r'"[\w.]+": "([\w.\-]+)"', SCRIPT.read_text())}
    assert names and names <= listed, f"missing from device_bench.sh: {sorted(names - listed)}"
