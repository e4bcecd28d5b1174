"""``"module:callable"`` references: the one importer for job files and ``setup=``/``teardown=`` strings.

A reference names a module and an attribute inside it, ``package.module:name``,
where the attribute may be dotted (``module:Class.method``), the same form as
the ``object reference`` of Python entry points
(https://packaging.python.org/en/latest/specifications/entry-points/).
Every failure is one line that names the field the reference came from and
the fix; job files raise :class:`~batchmem.errors.JobFileError`, Python
options :class:`~batchmem.errors.ConfigError`.
"""

from __future__ import annotations

import difflib
import importlib
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ConfigError, one_line

__all__ = ["REF_PATTERN", "REF_RE", "import_callable", "is_reference", "short_repr"]

#: ``module:callable`` (the callable part may be dotted: ``module:Class.method``).
REF_PATTERN = r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$"
REF_RE = re.compile(REF_PATTERN)


def is_reference(value: object) -> bool:
    """Whether ``value`` is a string of the form ``module:callable``."""
    return isinstance(value, str) and REF_RE.match(value) is not None


def short_repr(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, for quoting a user's value in a one-line message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def import_callable(
    ref: str,
    *,
    field: str = "function",
    base_dir: Path | str | None = None,
    error: type[ConfigError] = ConfigError,
) -> Callable[..., Any]:
    """Import ``"module:attr"`` (``attr`` may be dotted) and return it if it is callable.

    ``base_dir`` (a job file's folder) is put first on :data:`sys.path` and
    left there, so that worker processes unpickling the function by reference
    import the same module. Every failure raises ``error`` (a ConfigError
    subclass) with one line naming ``field``: a malformed reference, a module
    that is missing or raises while importing, a missing attribute (with the
    closest existing name), an attribute that is not callable.
    """
    if not is_reference(ref):
        raise error(f"{field}: expected 'module:callable' such as 'transform:clean', got {short_repr(ref)}")
    module_name, _, attr_path = ref.partition(":")
    if base_dir is not None:
        folder = str(Path(base_dir).resolve())
        if folder not in sys.path:
            sys.path.insert(0, folder)
        importlib.invalidate_caches()
    module = _import_module(module_name, ref, field, base_dir, error)
    obj: Any = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; define {part} there or fix the name"
            owner = module_name if obj is module else f"{module_name}:{attr_path.rsplit('.', 1)[0]}"
            raise error(f"{field}: {owner!r} has no attribute {part!r}{hint}") from None
    if not callable(obj):
        raise error(f"{field}: {ref!r} is a {type(obj).__name__}, not a callable; point {field} at a function")
    return obj


def _import_module(
    module_name: str, ref: str, field: str, base_dir: Path | str | None, error: type[ConfigError]
) -> Any:
    where = f" (searched {base_dir} and the installed packages)" if base_dir is not None else ""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        if module_name == missing or module_name.startswith(missing + "."):
            raise error(
                f"{field}: cannot import module {missing!r}{where}; fix the module name in {ref!r} or install it"
            ) from exc
        raise error(
            f"{field}: importing {module_name!r} failed: it needs module {missing!r}, which is not installed; "
            "install it"
        ) from exc
    except SyntaxError as exc:
        raise error(
            f"{field}: importing {module_name!r} failed: SyntaxError in {exc.filename} line {exc.lineno}: "
            f"{one_line(exc.msg)}; fix the module"
        ) from exc
    except Exception as exc:  # the user's module raised while importing
        raise error(
            f"{field}: importing {module_name!r} failed: {type(exc).__name__}: {one_line(exc)}; fix the module"
        ) from exc
