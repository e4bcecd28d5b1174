"""A module that fails while it is imported."""

raise RuntimeError("boom while importing")
