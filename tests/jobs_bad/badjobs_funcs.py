"""Functions the malformed job files in this folder refer to (good and bad ones)."""

NOT_CALLABLE = 42


def double(x):
    return x * 2


def make_items(n=10):
    return range(n)


def make_state():
    return {"factor": 2}
