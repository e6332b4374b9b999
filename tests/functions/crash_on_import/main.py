"""A function whose module fails at import: its revision must never become ready."""

raise RuntimeError("this function is broken on purpose")


def echo(request):
    return "unreachable"
