"""The public interface of a module: what its users may call, without how it does it.

QTest writes a model's tests from the request and this interface, never from the implementation, so the tests
check what was asked for rather than copy the bugs of the code they test.
"""

from __future__ import annotations

import ast
import copy

MAX_INTERFACE_CHARS = 12_000


def public_interface(source: str) -> str:
    """Signatures, docstrings and public constants of ``source``, with every body replaced by ``...``.

    Private names (a leading underscore) are left out, except dunder methods such as ``__init__``. Source that
    does not parse has no interface: the empty string.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return ""
    kept = [node for node in (_public(node) for node in tree.body) if node is not None]
    docstring = ast.get_docstring(tree)
    body: list[ast.stmt] = [ast.Expr(ast.Constant(docstring))] if docstring else []
    text = ast.unparse(ast.Module(body=body + kept, type_ignores=[]))
    return text[:MAX_INTERFACE_CHARS]


def _hidden(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _public(node: ast.stmt) -> ast.stmt | None:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None if _hidden(node.name) else _stub(node)
    if isinstance(node, ast.ClassDef):
        if _hidden(node.name):
            return None
        members = [m for m in (_public(item) for item in node.body) if m is not None]
        doc = ast.get_docstring(node)
        head: list[ast.stmt] = [ast.Expr(ast.Constant(doc))] if doc else []
        shown = copy.copy(node)
        shown.body = head + members or [ast.Expr(ast.Constant(...))]
        return shown
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and not _hidden(node.target.id):
        return ast.AnnAssign(target=node.target, annotation=node.annotation, value=None, simple=1)
    if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) and not _hidden(t.id) for t in node.targets):
        return node if isinstance(node.value, ast.Constant) else None
    return None


def _stub(node: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.stmt:
    doc = ast.get_docstring(node)
    body: list[ast.stmt] = [ast.Expr(ast.Constant(doc))] if doc else []
    stub = copy.copy(node)
    stub.body = [*body, ast.Expr(ast.Constant(...))]
    return stub
