"""A module whose own import of a missing package fails."""

import batchmem_no_such_dependency_xyz  # noqa: F401


def f(x):
    return x
