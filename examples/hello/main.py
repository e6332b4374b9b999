"""An HTTP function with a dependency: `markupsafe` escapes the name, so the greeting is
safe to show in a page."""

import functions_framework
from markupsafe import escape


@functions_framework.http
def hello(request):
    name = request.args.get("name", "world")
    return f"Hello, {escape(name)}!\n"
