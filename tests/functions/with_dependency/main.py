"""An HTTP function whose requirements come from the test wheelhouse."""

import localgreeting


def hello(request):
    return localgreeting.greet("build")
