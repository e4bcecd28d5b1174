"""Import a ``"module:callable"`` reference (job files, ``setup=``/``teardown=`` strings): the one importer."""

from __future__ import annotations

import difflib
import importlib
import re
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError, one_line

__all__ = ["REF_PATTERN", "REF_RE", "import_callable"]

#: ``module:callable`` (the callable part may be dotted: ``module:Class.method``).
REF_PATTERN = r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$"
REF_RE = re.compile(REF_PATTERN)


def _short_repr(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def import_callable(ref: str, *, field: str = "function", base_dir: Path | str | None = None,
                    error: type[ConfigError] = ConfigError) -> Any:
    """Import ``module:attr`` (``attr`` may be dotted) and return it if callable.

    ``base_dir`` (the job file's folder) is put first on :data:`sys.path` and
    left there, so that worker processes unpickling the function by reference
    can import the same module. Every failure is a one-line error
    naming ``field``, of type ``error`` (``ConfigError``; job files pass ``JobFileError``).
    """
    if not isinstance(ref, str) or not REF_RE.match(ref):
        raise error(f"{field}: expected 'module:callable' such as 'transform:clean', got {_short_repr(ref)}")
    module_name, _, attr_path = ref.partition(":")
    if base_dir is not None:
        folder = str(Path(base_dir).resolve())
        if folder not in sys.path:
            sys.path.insert(0, folder)
        importlib.invalidate_caches()
    where = f" (searched {base_dir} and the installed packages)" if base_dir is not None else ""
    try:
        module = importlib.import_module(module_name)
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
        raise error(
            f"{field}: {ref!r} is a {type(obj).__name__}, not a callable; point {field} at a function"
        )
    return obj
