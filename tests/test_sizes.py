"""Size guardrails: no module of the package over 500 lines, no function over 50 lines of code.

Large modules and long functions are where repeated definitions hide and drift apart; this test makes
growth past the limits a failing check rather than a review finding. Lines of code exclude blank lines,
comments and a function's docstring (the why may take the room it needs).
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "batchmem"
MAX_MODULE_LINES = 500
MAX_FUNCTION_CODE_LINES = 50


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _code_lines(source: str) -> set[int]:
    """Line numbers that hold a token other than a comment, a newline or an indent."""
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return lines


def _docstring_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> set[int]:
    first = fn.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return set(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return set()


def function_sizes(source: str) -> list[tuple[str, int, int]]:
    """``(qualified name, first line, lines of code)`` of every function and method in ``source``."""
    code = _code_lines(source)
    out: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                span = set(range(child.lineno, (child.end_lineno or child.lineno) + 1))
                out.append((prefix + child.name, child.lineno, len((span & code) - _docstring_lines(child))))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(source), "")
    return out


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_is_at_most_500_lines(path: Path) -> None:
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_MODULE_LINES, f"{path.relative_to(PACKAGE.parent)} has {n} lines; split it by job"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_functions_are_at_most_50_lines_of_code(path: Path) -> None:
    too_long = [
        f"{name} (line {line}): {n} lines of code"
        for name, line, n in function_sizes(path.read_text(encoding="utf-8"))
        if n > MAX_FUNCTION_CODE_LINES
    ]
    assert not too_long, f"{path.relative_to(PACKAGE.parent)}: " + "; ".join(too_long)


def test_the_measure_counts_code_and_skips_docstrings_comments_and_blank_lines() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(51))
    docstring = '    """Doc.\n\n    More doc.\n    """\n'
    source = f"def long():\n{docstring}    # a comment\n\n{body}\n\ndef short():\n    return 1\n"
    sizes = {name: n for name, _, n in function_sizes(source)}
    assert sizes == {"long": 52, "short": 2}  # the def line counts too
