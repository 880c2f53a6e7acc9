"""The import rules of ARCHITECTURE.md, checked on the source: a layer imports only from
the layers below it (or its own), and no module takes another module's private names."""

import ast
import pathlib

import cofisearch

PACKAGE = pathlib.Path(cofisearch.__file__).parent

# Top-level module or subpackage -> layer (ARCHITECTURE.md's table, Python part).
LAYERS = {
    "_core": 0, "_checks": 0, "_reference": 0, "_files": 0, "_bits": 0,
    "_rows": 1, "_index": 1, "ivf": 1, "cascade": 1, "tuning": 1,
    "metrics": 2, "datasets": 2, "encoders": 2,
    # The package itself (`import cofisearch`) re-exports layers 0-2.
    "": 2.5,
    "distributed": 3,
    "_bench": 4,
    "study": 5, "study_debian": 5, "study_scale": 5,
    "cli": 6, "__main__": 6,
}
# Package-private modules whose public-in-module names are the package's internal API:
# the glue, the index modules and the benchmark harness (private to users, not to us).
INTERNAL = {"_core", "_checks", "_reference", "_files", "_bits", "_rows", "_index", "_bench"}


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
            package = parts
        else:
            package = parts[:-1]
        yield path, parts, package


def imports(path, package):
    """(target module parts, imported name or None) for every import of cofisearch code."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "cofisearch":
                    yield parts[1:], None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "cofisearch":
                target = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:
                yield target, alias.name


def layer_of(target, name):
    """Layer of what `from target import name` reaches: a module, or the package facade."""
    if target:
        return LAYERS[target[0]]
    return LAYERS[name] if name in LAYERS else LAYERS[""]


def is_private(name):
    return name.startswith("_") and not name.startswith("__")


def test_every_module_has_a_layer():
    missing = {parts[0] for _, parts, _ in modules() if parts and parts[0] not in LAYERS}
    assert not missing, f"add these to LAYERS and to ARCHITECTURE.md: {sorted(missing)}"


def test_layers_import_only_from_below():
    wrong = []
    for path, parts, package in modules():
        if not parts:
            continue  # the package's __init__ is the facade over every layer it exports
        for target, name in imports(path, package):
            if layer_of(target, name) > LAYERS[parts[0]]:
                wrong.append(f"{'.'.join(parts)} imports {'.'.join(target) or name}")
    assert not wrong, "\n".join(wrong)


def test_no_module_takes_another_modules_private_names():
    wrong = []
    for path, parts, package in modules():
        for target, name in imports(path, package):
            same_subpackage = bool(package) and target[: len(package)] == package
            # A private module of another subpackage (metrics._scan from outside metrics).
            private_module = any(is_private(p) and p not in INTERNAL for p in target)
            if private_module and not same_subpackage:
                wrong.append(f"{'.'.join(parts)} imports from {'.'.join(target)}")
            if name and is_private(name) and not same_subpackage:
                if not (name in INTERNAL and not target):  # `from . import _core` is fine
                    wrong.append(f"{'.'.join(parts)} imports {name} from {'.'.join(target)}")
    assert not wrong, "\n".join(wrong)
