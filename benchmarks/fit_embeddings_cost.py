"""What a text costs the embeddings example's model: a least-squares fit behind ``embed.model_cost``.

    pip install -e ".[embeddings]"
    python benchmarks/fit_embeddings_cost.py [--texts 400]

One process, the model loaded once (examples/embeddings/embed.py), the first N standard-library texts sorted
by length (the job's order), embedded twice in consecutive batches of 8 and then of 4. Each size fits
``seconds = fixed + a x (characters read, at most 900) + b x (all characters)`` over its batches and prints
the fixed part per text in characters read (``fixed / size / a``) and the tokenizing share (``b / a``): the
constants ``PER_TEXT`` and ``TOKENIZE_SHARE`` of the job's weight. A fixed part that is the same per text for
both sizes is a cost of each text, not of each batch.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "embeddings"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=400, help="first N standard-library files (default 400)")
    args = parser.parse_args()
    sys.path.insert(0, str(EXAMPLE))
    import embed

    texts = [t["text"] for t in embed.stdlib_texts(args.texts, order="length")]
    model = embed.load_model()
    model.encode(texts[:8], batch_size=8)  # warm-up
    print(
        "| batch | fixed per batch ms | us per character read | us per character | fixed per text, characters "
        "read | tokenizing share |"
    )
    print("|---|---|---|---|---|---|")
    for size in (8, 4):
        rows = []
        for _ in range(2):
            for i in range(0, len(texts), size):
                batch = texts[i : i + size]
                t0 = time.perf_counter()
                model.encode(batch, batch_size=len(batch))
                seconds = time.perf_counter() - t0
                rows.append((seconds, sum(min(len(x), embed.CHARS_READ) for x in batch), sum(len(x) for x in batch)))
        design = np.array([[1.0, read, chars] for _, read, chars in rows])
        (fixed, a, b), *_ = np.linalg.lstsq(design, np.array([r[0] for r in rows]), rcond=None)
        per_text = fixed / size / a
        print(f"| {size} | {fixed * 1e3:.1f} | {a * 1e6:.2f} | {b * 1e6:.3f} | {per_text:.0f} | 1/{a / b:.0f} |")


if __name__ == "__main__":
    main()
