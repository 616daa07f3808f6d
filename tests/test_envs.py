"""The conda environments in envs/: each parses, pins its versions, and provides every third-party package
that the flowlet code its rules run imports (so `--sdm conda` jobs do not die on an ImportError on a node).

Which code a rule runs is read statically: the rule's `conda:` file and its `python -m flowlet COMMAND`
from workflow/rules/*.smk, the command's module from flowlet/cli.py COMMANDS, and that module's imports
followed with `ast` through flowlet's own modules (function-level imports included: they run too).
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from flowlet.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]
RULES_DIR = REPO / "workflow" / "rules"
ENVS_DIR = REPO / "envs"

# Import names whose distribution is named differently (checked against PyPI and conda-forge names alike).
IMPORT_TO_DISTRIBUTION = {
    "ants": "antspyx",
    "cv2": "opencv-python",
    "fsl": "fslpy",
    "PIL": "pillow",
    "pywt": "pywavelets",
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
    "yaml": "pyyaml",
}
# conda-forge package names that differ from the PyPI distribution of the same code.
CONDA_TO_DISTRIBUTION = {"pytorch": "torch"}
# Every process starts as `python -m flowlet COMMAND`, which runs these before the command's module.
ENTRY_MODULES = ("flowlet.__main__", "flowlet.cli")


def normalise(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


@functools.cache
def installed_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distribution_of(import_name: str) -> str:
    if import_name in IMPORT_TO_DISTRIBUTION:
        return normalise(IMPORT_TO_DISTRIBUTION[import_name])
    installed = installed_distributions().get(import_name)
    return normalise(installed[0] if installed else import_name)


# ---------------------------------------------------------------------------------------------------------
# Rules -> environment file and flowlet command


@dataclass(frozen=True)
class RuleCommand:
    rule: str
    env_file: Path | None
    command: str


def _envs_variable() -> str:
    match = re.search(r'^ENVS\s*=\s*["\']([^"\']+)["\']', (RULES_DIR / "common.smk").read_text(), re.M)
    assert match, "workflow/rules/common.smk no longer defines ENVS, the folder of the conda environments"
    return match.group(1)


def rule_commands() -> list[RuleCommand]:
    """Every (rule, conda file, flowlet command) in the workflow's rule files."""
    envs = _envs_variable()
    found = []
    for smk in sorted(RULES_DIR.glob("*.smk")):
        text = smk.read_text()
        starts = list(re.finditer(r"^\s*rule\s+(\w+)\s*:", text, re.M))
        for start, end in zip(starts, starts[1:] + [None]):
            block = text[start.start() : end.start() if end else len(text)]
            conda = re.search(r"conda:\s*\n\s*f?[\"']([^\"']+)[\"']", block)
            env_file = (RULES_DIR / conda.group(1).replace("{ENVS}", envs)).resolve() if conda else None
            for command in dict.fromkeys(re.findall(r"python -m flowlet ([\w-]+)", block)):
                found.append(RuleCommand(start.group(1), env_file, command))
    return found


RULE_COMMANDS = rule_commands()


# ---------------------------------------------------------------------------------------------------------
# flowlet module -> third-party imports, transitively through flowlet's own modules


def module_file(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


class _ImportCollector(ast.NodeVisitor):
    """Absolute names of the modules a file imports at run time.

    Optional imports are left out: those guarded by `try: ... except ImportError` or by
    `if importlib.util.find_spec(...)`, and those under `if TYPE_CHECKING:` (never executed).
    """

    def __init__(self, module: str, is_package: bool):
        self.package = module if is_package else module.rpartition(".")[0]
        self.modules: set[str] = set()
        # `from package import name` may name a submodule or just an attribute of the package.
        self.maybe_modules: set[str] = set()

    def visit_Try(self, node: ast.Try) -> None:
        guards_import = any(
            handler.type is not None
            and any(
                isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError")
                for n in ast.walk(handler.type)
            )
            for handler in node.handlers
        )
        if not guards_import:
            for child in node.body:
                self.visit(child)
        for part in (*node.handlers, *node.orelse, *node.finalbody):
            self.visit(part)

    def visit_If(self, node: ast.If) -> None:
        names = {n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(node.test) if isinstance(n, ast.Attribute)}
        if names & {"TYPE_CHECKING", "find_spec"}:
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.modules.update(alias.name for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            anchor = self.package.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        self.modules.add(base)
        self.maybe_modules.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")


@dataclass
class ImportClosure:
    third_party: dict[str, set[str]]  # distribution -> flowlet modules importing it
    missing: dict[str, str]  # flowlet module that does not exist -> the module that imports it


def import_closure(start_modules: tuple[str, ...] | list[str]) -> ImportClosure:
    closure = ImportClosure(third_party={}, missing={})
    # (module, the module importing it, whether it must exist as a module rather than be an attribute)
    pending = [(name, "the command table in flowlet/cli.py", True) for name in start_modules]
    seen: set[str] = set()
    while pending:
        name, importer, required = pending.pop()
        top = name.split(".")[0]
        if not top or top == "__future__" or top in sys.stdlib_module_names:
            continue
        if top != "flowlet":
            closure.third_party.setdefault(distribution_of(top), set()).add(importer)
            continue
        if name in seen:
            continue
        path = module_file(name)
        if path is None:
            if required:
                closure.missing.setdefault(name, importer)
            continue
        seen.add(name)
        # Importing flowlet.a.b runs flowlet/__init__.py and flowlet/a/__init__.py first.
        parts = name.split(".")
        pending.extend((".".join(parts[:depth]), name, True) for depth in range(1, len(parts)))
        collector = _ImportCollector(name, path.name == "__init__.py")
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        pending.extend((imported, name, True) for imported in collector.modules)
        pending.extend((imported, name, False) for imported in collector.maybe_modules)
    return closure


# ---------------------------------------------------------------------------------------------------------
# Environment files


def read_env(path: Path) -> dict:
    with path.open() as handle:
        env = yaml.safe_load(handle)
    assert isinstance(env, dict), f"{path.name}: not a YAML mapping"
    return env


def split_dependencies(env: dict) -> tuple[list[str], list[str]]:
    """(conda specs, pip specs) of an environment."""
    conda, pip = [], []
    for entry in env.get("dependencies") or []:
        if isinstance(entry, dict):
            pip.extend(entry.get("pip") or [])
        else:
            conda.append(str(entry))
    return conda, pip


def conda_name(spec: str) -> str:
    name = re.split(r"[\s=<>!~]", spec.split("::")[-1], maxsplit=1)[0]
    return CONDA_TO_DISTRIBUTION.get(name, name)


def pip_name(spec: str) -> str:
    return re.split(r"[\s\[=<>!~;@]", spec, maxsplit=1)[0]


def provided_distributions(env: dict) -> set[str]:
    conda, pip = split_dependencies(env)
    return {normalise(conda_name(spec)) for spec in conda} | {normalise(pip_name(spec)) for spec in pip}


def pinned_versions(env: dict) -> dict[str, str]:
    conda, pip = split_dependencies(env)
    versions = {}
    for spec in conda:
        match = re.fullmatch(r"([^\s=<>!~]+)\s*==?\s*([\w.*+!-]+)", spec.split("::")[-1])
        if match:
            versions[normalise(CONDA_TO_DISTRIBUTION.get(match.group(1), match.group(1)))] = match.group(2)
    for spec in pip:
        match = re.fullmatch(r"([^\s\[=<>!~;@]+)(?:\[[^\]]*\])?\s*==\s*([\w.*+!-]+)", spec)
        if match:
            versions[normalise(match.group(1))] = match.group(2)
    return versions


ENV_FILES = sorted(ENVS_DIR.glob("*.yaml"))


def test_envs_folder_has_environment_files():
    assert ENV_FILES, f"no environment files in {ENVS_DIR}"


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda path: path.name)
def test_environment_file_is_named_and_pins_every_package(env_file):
    env = read_env(env_file)
    for key in ("name", "channels", "dependencies"):
        assert env.get(key), f"{env_file.name}: '{key}' is missing or empty"
    assert "defaults" not in env["channels"], f"{env_file.name}: the anaconda 'defaults' channel needs a licence"
    conda, pip = split_dependencies(env)
    versions = pinned_versions(env)
    unpinned = [spec for spec in conda if conda_name(spec) != "pip" and normalise(conda_name(spec)) not in versions]
    unpinned += [spec for spec in pip if normalise(pip_name(spec)) not in versions]
    assert not unpinned, f"{env_file.name}: no exact version for {', '.join(unpinned)}"
    assert "python" in versions, f"{env_file.name}: the Python version is not pinned"


def test_environments_agree_on_shared_package_versions():
    pins: dict[str, dict[str, str]] = {}
    for env_file in ENV_FILES:
        for distribution, version in pinned_versions(read_env(env_file)).items():
            pins.setdefault(distribution, {})[env_file.name] = version
    conflicts = {name: files for name, files in pins.items() if len(set(files.values())) > 1}
    assert not conflicts, f"the same package is pinned to different versions: {conflicts}"


def test_every_flowlet_rule_runs_in_an_existing_environment():
    assert RULE_COMMANDS, f"no `python -m flowlet` commands found in {RULES_DIR}"
    for entry in RULE_COMMANDS:
        assert entry.env_file is not None, f"rule {entry.rule} runs `flowlet {entry.command}` without a conda: file"
        assert entry.env_file.is_file(), f"rule {entry.rule}: its environment {entry.env_file} does not exist"
        assert entry.command in COMMANDS, (
            f"rule {entry.rule} runs `flowlet {entry.command}`, not in flowlet/cli.py COMMANDS"
        )


def test_import_walk_follows_flowlet_modules_to_third_party_packages():
    # The generator's training CLI reaches torch only through flowlet.generative.*; the walk must see it.
    closure = import_closure([*ENTRY_MODULES, COMMANDS["train"][0]])
    assert "torch" in closure.third_party
    assert any(module != COMMANDS["train"][0] for module in closure.third_party["torch"])
    assert not closure.missing


def test_import_walk_names_a_missing_command_module():
    closure = import_closure([*ENTRY_MODULES, "flowlet.no_such_stage.cli"])
    assert closure.missing == {"flowlet.no_such_stage.cli": "the command table in flowlet/cli.py"}


@pytest.mark.parametrize(
    "entry",
    [entry for entry in RULE_COMMANDS if entry.env_file is not None],
    ids=lambda entry: f"{entry.rule}-{entry.command}",
)
def test_environment_provides_every_package_its_rule_imports(entry):
    module = COMMANDS[entry.command][0]
    closure = import_closure([*ENTRY_MODULES, module])
    assert not closure.missing, (
        f"rule {entry.rule} runs `flowlet {entry.command}`, but these modules do not exist: "
        + ", ".join(f"{name} (imported by {importer})" for name, importer in sorted(closure.missing.items()))
    )
    provided = provided_distributions(read_env(entry.env_file))
    lacking = {name: sorted(users) for name, users in closure.third_party.items() if name not in provided}
    assert not lacking, f"envs/{entry.env_file.name} (rule {entry.rule}, `flowlet {entry.command}`) lacks " + "; ".join(
        f"{name} (imported by {', '.join(users)})" for name, users in sorted(lacking.items())
    )
