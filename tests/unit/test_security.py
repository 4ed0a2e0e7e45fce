"""Security invariants of the source tree, checked on its syntax trees (no import, nothing run):

- arrays load with ``np.load(..., allow_pickle=False)``, torch checkpoints with ``weights_only=True``, YAML with
  ``yaml.safe_load``: a file from a knowledge base or model folder never runs code when read;
- no pickle (nor marshal, shelve, dill, cloudpickle), no ``eval``/``exec``, no shell (``shell=True``, ``os.system``,
  ``os.popen``);
- Jinja2 templates (the prompt templates, a model's chat template) render only in Jinja2's sandbox;
- tar archives extract with a ``filter``.

``ruff``'s S rules and ``bandit`` (scripts/test.sh) cover more ground with heuristics; these are the rules without
exceptions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TREES = ("src", "client", "benchmarks", "scripts", "docker", "model_repository", "tests")
PICKLERS = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "joblib"}
UNSANDBOXED = {"Environment", "Template", "NativeEnvironment"}  # jinja2's and jinja2.nativetypes' plain ones


def python_files() -> list[Path]:
    files = [p for tree in TREES for p in (ROOT / tree).rglob("*.py")]
    return sorted(p for p in files if not {".venv", "__pycache__", "build"} & set(p.relative_to(ROOT).parts))


def dotted(node: ast.AST) -> str:
    """``np.load`` for the expression np.load, ``""`` for anything that is not a plain dotted name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def findings(source: str, path: str = "<string>") -> list[str]:
    """What in ``source`` breaks the rules above, as ``path:line: what``."""
    tree = ast.parse(source, path)
    found: list[str] = []

    def add(node: ast.AST, what: str) -> None:
        found.append(f"{path}:{node.lineno}: {what}")

    jinja_names: set[str] = set()  # local names of jinja2's unsandboxed classes (from jinja2 import Environment)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLERS:
                    add(node, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in PICKLERS:
                add(node, f"from {node.module} import ...")
            if node.module.split(".")[0] == "jinja2":
                jinja_names |= {a.asname or a.name for a in node.names if a.name in UNSANDBOXED}
        elif isinstance(node, ast.Call):
            name = dotted(node.func)
            last = node.func.attr if isinstance(node.func, ast.Attribute) else name
            if name in ("np.load", "numpy.load") and not keyword_is(node, "allow_pickle", False):
                add(node, f"{name} without allow_pickle=False")
            elif name == "torch.load" and not keyword_is(node, "weights_only", True):
                add(node, "torch.load without weights_only=True")
            elif name in ("yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all",
                          "yaml.full_load_all"):
                add(node, f"{name}: use yaml.safe_load")
            elif name in ("eval", "exec"):
                add(node, f"{name}()")
            elif name in ("os.system", "os.popen") or name.startswith("os.spawn") or name.startswith("os.exec"):
                add(node, f"{name}()")
            elif name.startswith(("subprocess.", "asyncio.")) and keyword_is(node, "shell", True):
                add(node, f"{name}(shell=True)")
            elif name == "asyncio.create_subprocess_shell":
                add(node, name)
            elif name in jinja_names or (name.startswith("jinja2.") and last in UNSANDBOXED):
                add(node, f"{name}(): render templates in jinja2.sandbox's ImmutableSandboxedEnvironment")
            elif last == "extractall" and not any(k.arg == "filter" for k in node.keywords):
                add(node, f"{name or last}() without filter=")
    return found


@pytest.mark.parametrize("snippet, expected", [
    ("import numpy as np\nnp.load('v.npy')", "np.load without allow_pickle=False"),
    ("import numpy as np\nnp.load('v.npy', allow_pickle=True)", "np.load without allow_pickle=False"),
    ("import numpy\nnumpy.load('v.npy', mmap_mode='r')", "numpy.load without allow_pickle=False"),
    ("import torch\ntorch.load('m.pt')", "torch.load without weights_only=True"),
    ("import yaml\nyaml.load(text, Loader=yaml.Loader)", "yaml.load: use yaml.safe_load"),
    ("import pickle", "import pickle"),
    ("from cloudpickle import loads", "from cloudpickle import ..."),
    ("eval('1 + 1')", "eval()"),
    ("exec(code)", "exec()"),
    ("import subprocess\nsubprocess.run('ls', shell=True)", "subprocess.run(shell=True)"),
    ("import os\nos.system('ls')", "os.system()"),
    ("from jinja2 import Environment\nEnvironment().from_string(t)", "Environment(): render templates"),
    ("import jinja2\njinja2.Template(t)", "jinja2.Template(): render templates"),
    ("import tarfile\ntarfile.open(p).extractall(d)", "extractall() without filter="),
])
def test_the_scanner_finds_each_kind(snippet, expected):
    (finding,) = findings(snippet)
    assert expected in finding


def test_the_scanner_passes_the_safe_forms():
    safe = """
import numpy as np, subprocess, tarfile, yaml
from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
np.load("v.npy", mmap_mode="r", allow_pickle=False)
yaml.safe_load(text)
subprocess.run(["tritonserver", "--help"], check=True)
ImmutableSandboxedEnvironment(undefined=StrictUndefined).from_string(t)
model.eval()
tarfile.open(p).extractall(d, filter="data")
"""
    assert findings(safe) == []


def test_the_source_tree_follows_the_rules():
    files = python_files()
    assert len(files) > 100 and ROOT / "src" / "tritonrag" / "kb" / "search.py" in files
    problems = [f for p in files for f in findings(p.read_text(), p.relative_to(ROOT).as_posix())]
    assert problems == [], "\n".join(problems)


def test_every_np_load_in_the_package_is_checked():
    """The knowledge base's vectors are read with np.load: the rule above must have something to hold."""
    calls = [node for p in (ROOT / "src").rglob("*.py") for node in ast.walk(ast.parse(p.read_text()))
             if isinstance(node, ast.Call) and dotted(node.func) in ("np.load", "numpy.load")]
    assert calls and all(keyword_is(c, "allow_pickle", False) for c in calls)


def test_templates_render_in_the_sandbox():
    """Prompt templates (operator files, [prompt_builder] template_dir) and a model's chat template (a file shipped
    with the model) are rendered by jinja2's ImmutableSandboxedEnvironment, never a plain Environment."""
    for module in ("prompts/builder.py", "prompts/chat_format.py"):
        tree = ast.parse((ROOT / "src" / "tritonrag" / module).read_text())
        imported = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert ("jinja2.sandbox", "ImmutableSandboxedEnvironment") in imported, module
        calls = {dotted(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        assert "ImmutableSandboxedEnvironment" in calls, module
    def imports_jinja2(path: Path) -> bool:
        return any((isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "jinja2")
                   or (isinstance(n, ast.Import) and any(a.name.split(".")[0] == "jinja2" for a in n.names))
                   for n in ast.walk(ast.parse(path.read_text())))

    users = sorted(p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src").rglob("*.py") if imports_jinja2(p))
    assert users == ["tritonrag/prompts/builder.py", "tritonrag/prompts/chat_format.py"], users


def test_a_sandboxed_template_cannot_reach_python_internals():
    from jinja2.exceptions import SecurityError

    from tritonrag.prompts.chat_format import _environment

    env = _environment()
    with pytest.raises(SecurityError):
        env.from_string("{{ ''.__class__.__mro__[1].__subclasses__() }}").render()
    with pytest.raises(SecurityError):
        env.from_string("{% set x = [] %}{{ x.append(1) }}").render()  # immutable: no mutation of values either
