"""The house's rules: imports only point down the floors, commands are thin and share one shape, the library defines
no flag at import time, and every flag's default is its config dataclass's default."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags

import isp_keras
from isp_keras import config

PACKAGE = Path(isp_keras.__file__).parent
GROUND = {"errors", "fsutil", "paths", "config", "console"}
# What each floor may import from isp_keras (besides the ground and itself).
MAY_IMPORT = {
    "raw": set(),
    "data": {"raw"},
    "models": {"raw"},
    "training": {"raw", "data", "models"},
    "deploy": {"raw", "data", "models", "training"},
    "bench": {"raw", "data", "models", "training", "deploy"},
}
COMMANDS = sorted(
    [p.stem for p in PACKAGE.glob("*.py") if p.stem not in GROUND | {"__init__", "cli"}]
    + [f"experiments.{p.stem}" for p in (PACKAGE / "experiments").glob("*.py") if p.stem != "__init__"]
)


def isp_imports(path: Path) -> set[str]:
    """Every isp_keras module a file imports (at any depth: lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "isp_keras":
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "isp_keras"}
    return found


def floor_of(name: str) -> str:
    """'isp_keras.data.pipeline.build' -> 'data'; ground modules -> 'ground'; top-level commands -> 'commands'."""
    parts = name.split(".")[1:]
    if not parts or parts[0] in GROUND or parts[0] in ("cli",):
        return "ground" if not parts or parts[0] != "cli" else "commands"
    return parts[0] if parts[0] in MAY_IMPORT else "commands"


@pytest.mark.parametrize("floor", sorted(MAY_IMPORT))
def test_imports_only_point_down(floor):
    for path in sorted((PACKAGE / floor).rglob("*.py")):
        for name in isp_imports(path):
            target = floor_of(name)
            assert target in {"ground", floor} | MAY_IMPORT[floor], f"{path.relative_to(PACKAGE)} imports {name}"


def test_raw_and_ground_import_no_keras():
    paths = list((PACKAGE / "raw").glob("*.py")) + [PACKAGE / f"{g}.py" for g in GROUND]
    for path in paths:
        tree = ast.parse(path.read_text())
        modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {m for m in modules if m.split(".")[0] == "keras"}, path


def test_ground_imports_nothing_above_it():
    for g in GROUND:
        for name in isp_imports(PACKAGE / f"{g}.py"):
            assert floor_of(name) == "ground", f"{g}.py imports {name}"


def command_config(module_name: str):
    """The config dataclass a command passes to cli.main (read from its `if __name__ == "__main__"` block)."""
    path = PACKAGE / (module_name.replace(".", "/") + ".py")
    calls = [
        n
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == "main"
        and getattr(n.func.value, "id", "") == "cli"
    ]
    assert len(calls) == 1, f"{module_name}: its main must be cli.main(Config, run)"
    module = importlib.import_module(f"isp_keras.{module_name}")
    return getattr(module, calls[0].args[0].id)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_default_is_the_config_default(command):
    cls = command_config(command)
    fv = flags.FlagValues()
    config.define_flags(cls, fv)
    required = [f.name for f, _, _ in config.fields(cls) if f.metadata["required"]]
    fv(["prog"] + [f"--{name}=x" for name in required])
    fields = config.fields(cls)
    assert fields, f"{command}: no flags"
    for field, kind, item in fields:
        if field.metadata["positional"] or field.metadata["required"]:
            continue
        default = config.default_of(field)
        got = fv[field.name].default
        if kind is list:
            got = [item(v) for v in got]
        assert got == default, f"{command} --{field.name}: flag default {got!r} != config default {default!r}"
        assert fv[field.name].help.endswith(field.metadata["help"]) and field.metadata["help"]
    names = {f.name for f in dataclasses.fields(cls)}
    assert {f.name for f, _, _ in fields} == names, f"{command}: a config field without a flag"


def test_commands_are_thin():
    """A command module holds its docstring, imports, `run` and the cli.main block, and nothing heavy at import."""
    for command in COMMANDS:
        path = PACKAGE / (command.replace(".", "/") + ".py")
        tree = ast.parse(path.read_text())
        top = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert [n.name for n in top if isinstance(n, ast.FunctionDef)] == ["run"], command
        assert len(path.read_text().splitlines()) < 80, f"{command}: not thin"
        imported = {n.module for n in tree.body if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        assert not {m for m in imported if m and m.split(".")[0] in ("tensorflow", "keras")}, command


def test_no_flag_is_defined_at_import_time():
    """Importing every module (library and commands) defines no absl flag."""
    names = [m.name for m in pkgutil.walk_packages(isp_keras.__path__, "isp_keras.")]
    code = (
        "from absl import flags; import importlib; "
        f"[importlib.import_module(n) for n in {names!r}]; "
        "print(sorted(m for m in flags.FLAGS.flags_by_module_dict() if 'isp_keras' in m))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_commands_start_quietly(tmp_path):
    """No TensorFlow C++ start-up lines (oneDNN, CPU features) unless asked for with --verbosity=1."""
    env = {k: v for k, v in __import__("os").environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    quiet = subprocess.run(
        [sys.executable, "-m", "isp_keras.rawinfo", str(tmp_path / "none.dng")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert quiet.returncode == 1 and quiet.stdout.startswith(f"{tmp_path / 'none.dng'}: ")
    for noise in ("cpu_feature_guard", "oneDNN", "absl::InitializeLog", "is deprecated"):
        assert noise not in quiet.stderr, quiet.stderr
    loud = subprocess.run(
        [sys.executable, "-m", "isp_keras.rawinfo", "--verbosity=1", str(tmp_path / "none.dng")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert "cpu_feature_guard" in loud.stderr or "oneDNN" in loud.stderr


def test_stray_arguments_are_refused():
    """A command without positional arguments refuses one (a forgotten `--`), in one line; one with them takes them."""
    from isp_keras import cli, rawinfo
    from isp_keras.errors import UserError
    from isp_keras.training.config import TrainConfig

    fv = flags.FlagValues()
    config.define_flags(TrainConfig, fv)
    fv(["prog"])
    with pytest.raises(UserError, match="unexpected argument 'noise_std=0.2'"):
        cli.make_main(TrainConfig, lambda cfg: None, fv)(["prog", "noise_std=0.2"])
    seen = []
    fv = flags.FlagValues()
    config.define_flags(rawinfo.RawinfoConfig, fv)
    fv(["prog"])
    cli.make_main(rawinfo.RawinfoConfig, seen.append, fv)(["prog", "a.dng", "b.dng"])
    assert seen[0].files == ["a.dng", "b.dng"]


# A doc or comment that speaks of when it was written, not of what the system is.
DIARY = re.compile(
    r"\b(this|that|an earlier|the last|the next|earlier|later|previous) sessions?\b|\bissues? #?\d+", re.I
)


def test_docs_and_comments_describe_the_system_not_its_history():
    root = Path(isp_keras.__file__).resolve().parent.parent
    files = [*root.glob("*.md"), *(root / "docs").rglob("*.md"), *(root / "tools").glob("*.py")]
    files += [*(root / "isp_keras").rglob("*.py"), *(root / "tests").rglob("*.py")]
    hits = [
        f"{path.relative_to(root)}:{number}: {line.strip()[:80]}"
        for path in files
        if path.name != "test_layout.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if DIARY.search(line)
    ]
    assert not hits, "\n".join(hits)
    assert (root / "BUILD_NOTES.md").stat().st_size <= 15_000  # the design record; history is in CHANGELOG.md


def _imports_of(path: Path) -> set[str]:
    """Every isp_keras module `path` imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("isp_keras"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if _module_path(candidate) else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("isp_keras"))
    return found


def _module_path(name: str) -> Path | None:
    base = PACKAGE.parent / Path(*name.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.exists()), None)


def test_the_import_graph_has_no_circle():
    """Lazy imports inside functions count too: a circle hidden by them is still a circle."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = _imports_of(path) - {name}
    state = {}

    def visit(name, stack):
        state[name] = "open"
        for dep in sorted(modules.get(name, ())):
            if state.get(dep) == "open":
                raise AssertionError(" -> ".join([*stack[stack.index(dep) :], dep]))
            if dep in modules and dep not in state:
                visit(dep, [*stack, dep])
        state[name] = "done"

    for name in sorted(modules):
        if name not in state:
            visit(name, [name])


def test_no_module_is_over_500_lines():
    """One role per module: a module that outgrows this is split by role, not left to grow."""
    long = {
        str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500
    }
    assert not long, long
