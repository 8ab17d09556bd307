"""Every code block of the README runs: the Python ones here, the commands through CI or the CLI."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, re.S)
BASH_BLOCKS = re.findall(r"```bash\n(.*?)```", TEXT, re.S)


def test_readme_has_the_two_setup_commands():
    marked = re.findall(r"<!-- (main|test)-command -->\s*```bash\n(.*?)```", TEXT, re.S)
    assert [m[0] for m in marked] == ["main", "test"]
    assert "python -m fla_loglinear demo" in marked[0][1]
    assert "pytest" in marked[1][1]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "test-command" in ci and "main-command" in ci  # CI runs both, exactly as written


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[f"python-{i}" for i in range(len(PYTHON_BLOCKS))])
def test_python_block_runs(block):
    # A fresh interpreter: the user story patches fla, which must not leak into other tests.
    res = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=600,
                         cwd=README.parent)
    assert res.returncode == 0, res.stderr[-3000:]


def test_bench_command_needs_a_gpu():
    import torch

    cmds = [b.strip() for b in BASH_BLOCKS if b.strip().startswith("python -m fla_loglinear bench")]
    assert cmds, "the README shows how to run the benchmark report"
    if torch.cuda.is_available():
        pytest.skip("on a GPU the bench command runs for minutes; it is run by benchmarks/gpu_run.sh there")
    argv = [sys.executable if w == "python" else w for w in cmds[0].split()]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=README.parent)
    assert res.returncode == 2
    assert "GPU" in res.stdout + res.stderr
