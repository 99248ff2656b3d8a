"""Type hints on the public API: every public function and method of the covered modules
annotates its parameters and its return type, and ``typing.get_type_hints`` resolves them all
(names a module imports under ``if TYPE_CHECKING:`` included), so a misspelt or missing name in
a hint fails here. Add a module to ``MODULES`` once its public functions carry hints."""
from __future__ import annotations

import ast
import importlib
import inspect
import linecache
import sys
import textwrap
import types
import typing

import pytest

MODULES = [
    "minilocal.plan",
    "minilocal.compute.cost",
    "minilocal.compute.flops",
    "minilocal.compute.study",
    "minilocal.data",
    "minilocal.text",
    "minilocal.devices",
    "minilocal.threads",
    "minilocal.guards",
    "minilocal.models.common",
    "minilocal.models.conv",
    "minilocal.models.lm",
    "minilocal.models.mlp",
    "minilocal.numpy_core.gradcheck",
    "minilocal.numpy_core.layers",
    "minilocal.numpy_core.mlp",
    "minilocal.numpy_core.optim",
    "minilocal.numpy_core.stage",
    "minilocal.runtime.simulator",
    "minilocal.viz.plots",
    "minilocal.viz.pareto",
    "minilocal.viz.similarity",
    "minilocal.viz.style",
    "minilocal.viz.widgets",
    "minilocal.viz.dashboard",
    "minilocal.compute.pareto",
    "minilocal.compute.similarity",
    "minilocal.compute.sweep",
    "minilocal.local",
    "minilocal.stage",
    "minilocal.train",
    "minilocal.batches",
    "minilocal.checkpoint",
    "minilocal.validate",
    "minilocal.numpy_core.train",
    "minilocal.teaching.checks",
    "minilocal.teaching.concepts",
    "minilocal.teaching.release",
    "minilocal.teaching.grade",
]


def hint_namespace(module: types.ModuleType) -> dict[str, typing.Any]:
    """The module's globals plus the names its top-level ``if TYPE_CHECKING:`` blocks import."""
    ns = dict(vars(module))
    for node in ast.parse(inspect.getsource(module)).body:
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING",
                                                                   "typing.TYPE_CHECKING"):
            exec(compile(ast.Module(node.body, type_ignores=[]), module.__file__, "exec"), ns)
    return ns


def public_functions(module: types.ModuleType) -> list[tuple[str, typing.Callable]]:
    """(name, function) for each public function the module defines and each public method
    (properties, class and static methods included) of the public classes it defines."""
    out = []
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj):
            out.append((name, obj))
        elif inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_"):
                    continue
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                elif isinstance(member, property):
                    member = member.fget
                if inspect.isfunction(member):
                    out.append((f"{name}.{attr}", member))
    return out


def hint_problems(module: types.ModuleType) -> list[str]:
    """What is missing or unresolvable in the hints of the module's public functions."""
    ns, problems = hint_namespace(module), []
    for name, fn in public_functions(module):
        where = f"{module.__name__}.{name}"
        if "return" not in fn.__annotations__:
            problems.append(f"{where}: no return annotation")
        params = list(inspect.signature(fn).parameters.values())
        if params and params[0].name in ("self", "cls"):
            params = params[1:]
        problems += [f"{where}: parameter {p.name!r} has no annotation" for p in params
                     if p.annotation is inspect.Parameter.empty]
        try:
            typing.get_type_hints(fn, globalns=ns)
        except Exception as e:  # NameError for a name that is not imported, or a typo
            problems.append(f"{where}: get_type_hints fails: {type(e).__name__}: {e}")
    return problems


@pytest.mark.parametrize("name", MODULES)
def test_public_functions_have_resolvable_hints(name):
    module = importlib.import_module(name)
    assert public_functions(module), f"{name} defines no public function: drop it from MODULES"
    assert hint_problems(module) == []


def _module(name: str, source: str) -> types.ModuleType:
    """A module built from source, registered so that inspect can read it back."""
    module = types.ModuleType(name)
    module.__file__ = f"<{name}>"
    source = textwrap.dedent(source)
    code = compile(source, module.__file__, "exec")
    linecache.cache[module.__file__] = (len(source), None, source.splitlines(True),
                                        module.__file__)
    sys.modules[name] = module
    exec(code, vars(module))
    return module


def test_the_check_finds_missing_and_unresolvable_hints():
    module = _module("hinted_example", """
        from __future__ import annotations
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from collections.abc import Sequence

        def good(x: Sequence[int], *, k: int = 1) -> list[int]:
            return list(x)

        def no_return(x: int):
            return x

        def bare_param(x) -> int:
            return x

        def unknown_name(x: Nowhere) -> int:
            return 0

        def _private(x):
            return x

        class Box:
            def size(self) -> Missing:
                return 0

            @property
            def empty(self) -> bool:
                return True
        """)
    try:
        names = [name for name, _ in public_functions(module)]
        assert names == ["good", "no_return", "bare_param", "unknown_name", "Box.size",
                         "Box.empty"]
        problems = hint_problems(module)
        assert problems == [
            "hinted_example.no_return: no return annotation",
            "hinted_example.bare_param: parameter 'x' has no annotation",
            "hinted_example.unknown_name: get_type_hints fails: NameError: "
            "name 'Nowhere' is not defined",
            "hinted_example.Box.size: get_type_hints fails: NameError: "
            "name 'Missing' is not defined",
        ]
    finally:
        del sys.modules["hinted_example"]
        del linecache.cache["<hinted_example>"]
