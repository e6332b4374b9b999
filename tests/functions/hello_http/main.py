"""A minimal HTTP function with no dependencies."""


def hello(request):
    return "hello from a localcloud build"
