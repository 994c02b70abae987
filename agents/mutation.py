"""Mutants: deliberately broken variants of generated code, to tell tests that check behaviour from tests that
merely run it. Generated tests count only if they fail against these.

Each mutant changes one place: a comparison turned around, an arithmetic or boolean operator swapped, a constant
changed, or a ``return`` of a value replaced by ``return None``. Sites are spread over the module and chosen
deterministically, so the same code gives the same mutants on every run.
"""

from __future__ import annotations

import ast
import copy
from dataclasses import dataclass

COMPARE_SWAPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Lt: ast.GtE,
    ast.GtE: ast.Lt,
    ast.Gt: ast.LtE,
    ast.LtE: ast.Gt,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
BINOP_SWAPS: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.FloorDiv,
    ast.FloorDiv: ast.Mult,
    ast.Div: ast.Mult,
}


@dataclass(frozen=True)
class Mutant:
    description: str
    source: str


def _sites(tree: ast.AST) -> list[tuple[ast.AST, str]]:
    decorators = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        for decorator in node.decorator_list
        for inner in ast.walk(decorator)
    }
    sites: list[tuple[ast.AST, str]] = []
    for node in ast.walk(tree):
        if id(node) in decorators:  # configuration, not behaviour the tests could see
            continue
        if isinstance(node, ast.Compare) and type(node.ops[0]) in COMPARE_SWAPS:
            sites.append((node, "compare"))
        elif isinstance(node, ast.BinOp) and type(node.op) in BINOP_SWAPS:
            sites.append((node, "binop"))
        elif isinstance(node, ast.BoolOp):
            sites.append((node, "boolop"))
        elif (
            isinstance(node, ast.Return)
            and node.value is not None
            and not (isinstance(node.value, ast.Constant) and node.value.value is None)
        ):
            sites.append((node, "return"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
            sites.append((node, "bool"))
    return sorted(sites, key=lambda s: (getattr(s[0], "lineno", 0), getattr(s[0], "col_offset", 0)))


def _mutate(node: ast.AST, kind: str) -> str:
    line = getattr(node, "lineno", 0)
    if kind == "compare":
        assert isinstance(node, ast.Compare)
        old = type(node.ops[0])
        node.ops[0] = COMPARE_SWAPS[old]()
        return f"line {line}: {old.__name__} -> {type(node.ops[0]).__name__}"
    if kind == "binop":
        assert isinstance(node, ast.BinOp)
        old_op = type(node.op)
        node.op = BINOP_SWAPS[old_op]()
        return f"line {line}: {old_op.__name__} -> {type(node.op).__name__}"
    if kind == "boolop":
        assert isinstance(node, ast.BoolOp)
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        return f"line {line}: and/or swapped"
    if kind == "return":
        assert isinstance(node, ast.Return)
        node.value = ast.Constant(value=None)
        return f"line {line}: returns None"
    assert isinstance(node, ast.Constant)
    node.value = not node.value
    return f"line {line}: {not node.value} -> {node.value}"


def mutants(source: str, limit: int) -> list[Mutant]:
    """Up to ``limit`` single-change mutants of ``source``, spread evenly over its mutation sites."""
    tree = ast.parse(source)
    count = len(_sites(tree))
    if count == 0 or limit <= 0:
        return []
    picks = sorted({round(i * (count - 1) / max(1, limit - 1)) for i in range(min(limit, count))})
    found = []
    for index in picks:
        clone = copy.deepcopy(tree)
        node, kind = _sites(clone)[index]
        description = _mutate(node, kind)
        found.append(Mutant(description=description, source=ast.unparse(ast.fix_missing_locations(clone))))
    return found
