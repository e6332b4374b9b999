"""HTTP rule path templates (``/v1/{name=projects/*/topics/*}:publish``) matched against
request paths.

The grammar is ``google/api/http.proto``'s::

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    Verb     = ":" LITERAL ;

A template is compiled once into a regular expression over the request's raw (still
percent-encoded) path, so a ``%2F`` or ``%3A`` inside a resource id never splits a segment
or passes for the custom verb; captured values are decoded afterwards. As Google's front end
does, the custom verb is told apart first: ``/v1/projects/p/topics/t:publish`` is matched
only by templates ending in ``:publish``, never by ``/v1/{topic=projects/*/topics/*}``
taking ``t:publish`` for the topic's id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

_SEGMENT = "[^/]+"


class TemplateError(ValueError):
    """A path template outside the grammar (a generated rule we cannot serve)."""


@dataclass(frozen=True)
class Template:
    source: str
    regex: re.Pattern[str]
    variables: tuple[str, ...]  # field paths, in the order of the regex's groups
    verb: str
    literals: int  # literal segments: the more, the more specific (tried first)

    @staticmethod
    def parse(source: str) -> Template:
        if not source.startswith("/"):
            raise TemplateError(f"{source!r}: a path template starts with '/'")
        body, verb = source[1:], ""
        last = body.rfind("/")
        tail = body[last + 1 :]
        # The verb follows the last segment, outside any variable's braces.
        colon = tail.rfind(":")
        if colon >= 0 and "}" not in tail[colon:]:
            body, verb = body[: last + 1 + colon], tail[colon + 1 :]
        pattern, variables, literals = _segments(body, top=True)
        return Template(source, re.compile(pattern), tuple(variables), verb, literals)

    def match(self, path: str) -> dict[str, str] | None:
        """The variables' values (decoded) if ``path`` (raw, without its verb) matches."""
        found = self.regex.fullmatch(path)
        if found is None:
            return None
        return {
            name: unquote(value) for name, value in zip(self.variables, found.groups(), strict=True)
        }

    def example(self) -> str:
        """A path this template matches (each ``*`` an ``x``), for tests and messages."""
        text = re.sub(r"\{([^}=]+)(=([^}]*))?\}", lambda m: m.group(3) or "*", self.source)
        text = text.replace("**", "x/y").replace("*", "x")
        return text


def _segments(text: str, top: bool) -> tuple[str, list[str], int]:
    parts: list[str] = []
    variables: list[str] = []
    literals = 0
    for segment in _split(text):
        if segment.startswith("{"):
            if not top or not segment.endswith("}"):
                raise TemplateError(f"{text!r}: a variable is not closed or is nested")
            name, _, inner = segment[1:-1].partition("=")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", name):
                raise TemplateError(f"{text!r}: {name!r} is no field path")
            sub, _, inner_literals = _segments(inner or "*", top=False)
            literals += inner_literals
            parts.append(f"({sub})")
            variables.append(name)
        elif segment == "**":
            parts.append(".+")
        elif segment == "*":
            parts.append(_SEGMENT)
        else:
            if not segment or "{" in segment or "}" in segment:
                raise TemplateError(f"{text!r}: bad segment {segment!r}")
            parts.append(re.escape(segment))
            literals += 1
    return "/" + "/".join(parts) if top else "/".join(parts), variables, literals


def _split(text: str) -> list[str]:
    """Split on '/' outside braces (a variable's own segments stay in it)."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "/" and depth == 0:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return out


def split_verb(raw_path: str) -> tuple[str, str]:
    """``/v1/projects/p/topics/t:publish`` -> (``/v1/projects/p/topics/t``, ``publish``);
    the verb is whatever follows the last ':' of the last segment."""
    last = raw_path.rfind("/")
    colon = raw_path.rfind(":")
    if colon > last:
        return raw_path[:colon], raw_path[colon + 1 :]
    return raw_path, ""
