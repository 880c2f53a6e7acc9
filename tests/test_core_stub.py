"""python/cofisearch/_core.pyi against the compiled module: the same names, and for each
function the same parameters (names, order, which have defaults) as the signature pybind11
writes on the first line of its __doc__."""

import ast
import pathlib

import pytest

from cofisearch import _core

STUB = pathlib.Path(_core.__file__).with_name("_core.pyi")
MODULE_ATTRIBUTES = {"__doc__", "__file__", "__loader__", "__name__", "__package__", "__spec__"}


def _stub():
    """Top-level names of the stub: function name -> ast.arguments, or None for a constant."""
    out = {}
    for node in ast.parse(STUB.read_text()).body:
        if isinstance(node, ast.FunctionDef):
            out[node.name] = node.args
        elif isinstance(node, ast.AnnAssign):
            out[node.target.id] = None
    return out


def _split_top_level(text):
    """Splits on commas outside brackets: annotations such as dict[str, int] contain some."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "[("
        depth -= ch in "])"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _doc_parameters(fn):
    """(name, has_default) for each parameter of pybind11's signature line."""
    line = fn.__doc__.splitlines()[0]
    assert line.startswith(fn.__name__ + "("), line
    inner = line[len(fn.__name__) + 1 : line.rindex(") ->")]
    return [(p.split(":")[0].strip(), "=" in p) for p in _split_top_level(inner)]


def _stub_parameters(args):
    params = [*args.posonlyargs, *args.args]
    first_default = len(params) - len(args.defaults)
    out = [(a.arg, i >= first_default) for i, a in enumerate(params)]
    out += [(a.arg, d is not None) for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    return out


def test_stub_names_the_module_names():
    assert set(_stub()) == set(dir(_core)) - MODULE_ATTRIBUTES


def test_stub_constants_are_module_constants():
    for name, args in _stub().items():
        assert callable(getattr(_core, name)) == (args is not None), name


@pytest.mark.parametrize("name", sorted(n for n, a in _stub().items() if a is not None))
def test_stub_parameters_match_the_signature(name):
    assert _stub_parameters(_stub()[name]) == _doc_parameters(getattr(_core, name))
