"""The package's imports run one way (docs/design.md, "Layers and imports").

Every import of a package module, at the top of a file or inside a function, is read from
the source: the modules form layers, and a module imports only from layers below its own;
there is no import cycle; no module imports another's private names; the library never
imports its test tools (``bayeshlm.testing``); and the structure of a model is asked about
in one place only, the core's seam (``samplers/gaussian.py``).
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bayeshlm", "samplers")

# Layer of every module; a module may import modules of lower layers only.
LAYERS = {
    # the numerical core: values, then the passes, the seam, the moves, the chains
    "samplers._cache": 0, "samplers.types": 0, "samplers.linalg": 0, "samplers.sd_priors": 0,
    "samplers.polyagamma": 0, "samplers.fastexp": 0,
    "samplers.theta": 1, "samplers.suffstats": 1, "samplers.loglik": 1, "samplers.nested": 1,
    "samplers.two_level": 2,  # shares the nested score terms
    "samplers.crossed": 3,  # shares the nested M-step and the two-level passes
    "samplers.gaussian": 4,
    "samplers.gibbs": 5, "samplers.mh": 5, "samplers.ml": 5, "samplers.glm": 5,
    "samplers.sweep": 6, "samplers.augment": 6, "samplers.scale": 6, "samplers.newton": 6,
    "samplers.driver": 7,
    "samplers": 8,
    # the front end: foundations, inputs, the model, result layout and the fits' parts, the
    # fits, what reads fits, the command line and the test tools, the package
    "bayeshlm.version": 10, "bayeshlm.schema": 10, "bayeshlm.formula": 10, "bayeshlm.basis": 10,
    "bayeshlm.simulate": 10, "bayeshlm.start": 10,
    "bayeshlm.safe_formula": 11, "bayeshlm.data": 11, "bayeshlm.priors": 11, "bayeshlm.summary": 11,
    "bayeshlm.family": 11, "bayeshlm.varfunc": 11, "bayeshlm.glmm": 13,
    "bayeshlm.model": 12,
    "bayeshlm.hierarchy": 13, "bayeshlm.chunked": 13, "bayeshlm.results": 13, "bayeshlm.lrt": 13,
    "bayeshlm.partition": 13, "bayeshlm.robust": 13,
    "bayeshlm.memory": 14, "bayeshlm.em": 14, "bayeshlm.prior_draws": 14, "bayeshlm.evidence": 14,
    "bayeshlm.compare": 14, "bayeshlm.log_prior": 14, "bayeshlm.reliability": 14,
    "bayeshlm.level1": 14,
    "bayeshlm.predict": 15, "bayeshlm.io": 15, "bayeshlm.report": 15,
    "bayeshlm.plots": 15, "bayeshlm.accessors": 15, "bayeshlm.inference": 15, "bayeshlm.intervals": 15,
    "bayeshlm.impute": 16, "bayeshlm.marginal": 16,  # draws of missing responses use predict's
    "bayeshlm.sample": 17,  # may impute the missing responses of its result
    "bayeshlm.testing": 18,
    "bayeshlm": 19,
    "bayeshlm.__main__": 20,  # the command line, a user of the package
}


def _modules():
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).glob("*.py")):
            out[pkg if path.stem == "__init__" else f"{pkg}.{path.stem}"] = path
    return out


def _imports(modules):
    """``{module: [(imported module, imported name or None, line)]}`` of every package import."""
    found = {}
    for name, path in modules.items():
        rows = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.split(".")[0] not in PACKAGES:
                    continue
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    if sub in modules:  # "from pkg import module"
                        rows.append((sub, None, node.lineno))
                    else:
                        rows.append((node.module, alias.name, node.lineno))
            elif isinstance(node, ast.Import):
                rows += [(a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] in PACKAGES]
        found[name] = rows
    return found


MODULES = _modules()
IMPORTS = _imports(MODULES)


def test_every_module_has_a_layer():
    missing = sorted(set(MODULES) - set(LAYERS))
    assert not missing, f"give these modules a layer in tests/test_layers.py: {missing}"
    stale = sorted(set(LAYERS) - set(MODULES))
    assert not stale, f"modules listed in LAYERS that no longer exist: {stale}"


def test_imports_go_down_the_layers():
    bad = [f"{src} (layer {LAYERS[src]}) imports {dst} (layer {LAYERS.get(dst)}) at line {line}"
           for src, rows in IMPORTS.items() for dst, _, line in rows
           if dst != src and dst in LAYERS and src in LAYERS and LAYERS[dst] >= LAYERS[src]]
    assert not bad, "\n".join(bad)


def test_the_core_never_imports_the_front_end():
    bad = [f"{src} imports {dst}" for src, rows in IMPORTS.items() if src.startswith("samplers")
           for dst, _, _ in rows if dst.startswith("bayeshlm")]
    assert not bad, bad


def test_no_import_cycles():
    graph = {src: {dst for dst, _, _ in rows if dst in MODULES and dst != src} for src, rows in IMPORTS.items()}
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                pytest.fail("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_no_private_names_from_other_modules():
    bad = [f"{src} line {line}: from {dst} import {name}" for src, rows in IMPORTS.items()
           for dst, name, line in rows
           if name and name.startswith("_") and not (name.startswith("__") and name.endswith("__")) and dst != src]
    assert not bad, "\n".join(bad)


def test_the_library_never_imports_its_test_tools():
    bad = [src for src, rows in IMPORTS.items() if src != "bayeshlm.testing"
           for dst, _, _ in rows if dst == "bayeshlm.testing"]
    assert not bad, bad


def test_the_structure_is_asked_in_the_seam_only():
    """Which structure a model has (one factor or nested) is decided in samplers/gaussian.py alone."""
    pattern = re.compile(r"\bis_two_level\(|\btwo_level\(|\btree is (not )?None\b|\btree_flag\(|\bTwoLevelWork\b"
                         r"|\bNestedWork\b")
    bad = [f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
           for name, path in MODULES.items() if name != "samplers.gaussian"
           for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not bad, "\n".join(bad)


def test_code_cites_sections_the_design_notes_have():
    """Every section of docs/design.md that the code cites (by its title, in quotes after the file name) exists."""
    titles = set(re.findall(r"^#+ (.*)$", (ROOT / "docs" / "design.md").read_text(), re.M))
    cited = re.compile(r'design\.md(?:``)?,\s+((?:"[^"]+"(?:\s*(?:and|,)\s*)?)+)')
    bad = []
    for path in [p for pkg in PACKAGES + ("tests", "benchmarks") for p in (ROOT / pkg).rglob("*.py")]:
        for match in cited.finditer(path.read_text()):
            for title in re.findall(r'"([^"]+)"', match.group(1)):
                title = re.sub(r"\s*#\s*", " ", " ".join(title.split()))  # a title wrapped over comment lines
                if title not in titles:
                    bad.append(f"{path.relative_to(ROOT)}: {title!r}")
    assert not bad, "\n".join(bad)
