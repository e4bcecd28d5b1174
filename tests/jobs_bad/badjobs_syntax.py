"""A module with a syntax error (on purpose)."""


def f(:
    pass
