"""The package's layout: modules grouped by role, and no module that imports, directly or through others, one that
imports it back."""
import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'lksmn_arch'


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def package_imports(path: Path, modules: Set[str]) -> Set[str]:
    """The package's modules that ``path`` imports anywhere in it (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f'{node.module}.{alias.name}' if f'{node.module}.{alias.name}' in modules else node.module
                     for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def import_graph() -> Dict[str, Set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob('*.py')}
    return {name: package_imports(path, set(paths)) - {name} for name, path in paths.items()}


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import circle as a list of modules, or [] (depth-first search with colours)."""
    colour: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if not colour.get(nxt):
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        colour[node] = 2
        return []

    for node in sorted(graph):
        if not colour.get(node):
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_no_module_of_the_package_imports_itself_back_through_others():
    graph = import_graph()
    assert 'lksmn_arch.training.pipeline' in graph and graph['lksmn_arch.cli.train']  # the graph was read
    cycle = find_cycle(graph)
    assert not cycle, 'import circle: ' + ' -> '.join(cycle)


def test_the_cycle_finder_reports_a_circle_it_is_given():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': set()}) == []


def test_top_level_holds_only_the_package_entry_and_its_cross_cutting_modules():
    top = sorted(p.name for p in PACKAGE.glob('*.py'))
    assert top == ['__init__.py', 'compat.py', 'errors.py', 'registry.py', 'spandrel_support.py', 'version.py']
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / '__init__.py').is_file())
    assert folders == ['archs', 'cli', 'data', 'inference', 'models', 'training', 'utils', 'weights']


@pytest.mark.parametrize('command', ['train', 'test', 'prepare', 'demo', 'upscale', 'export'])
def test_each_command_module_is_thin(command):
    """A command module parses arguments and prints messages; the work is in functions elsewhere."""
    lines = (PACKAGE / 'cli' / f'{command}.py').read_text().count('\n')
    assert lines < 200


def test_public_names_shown_in_the_readme_still_import():
    code = ('import lksmn_arch, lksmn_arch.inference, lksmn_arch.spandrel_support; '
            'from lksmn_arch.inference import Upscaler; '
            'assert lksmn_arch.inference.Upscaler is Upscaler and callable(lksmn_arch.spandrel_support.install); '
            'from lksmn_arch.archs.lksmn_arch import LKSMN; from lksmn_arch.models.lksmn_model import LKSMNModel')
    subprocess.run([sys.executable, '-c', code], check=True, timeout=300)
