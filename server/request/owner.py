"""Who a job is from: owner names the queue page can show as they are, and per-artist tokens ([auth]).

With per-artist tokens the owner comes from the token, never from the body: a body may repeat the token's owner
or leave it out, and ask for a priority up to the token's `max_priority`; anything else is refused with a 403 that
says why (so a new owner name per job, or priority 10, cannot jump the fair queue). The single shared token
(server.token) keeps the self-declared owner of the body.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from .errors import RequestError

OWNER_MAX_CHARS = 64
PRIORITY_RANGE = (-10, 10)
# Unicode categories no owner name may hold: controls (C0, DEL, C1), format characters (bidi overrides such as
# U+202E, zero-width spaces and joiners, the BOM, soft hyphen), surrogates, line and paragraph separators.
_REFUSED_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def owner_problem(name: str) -> str | None:
    """Why `name` cannot be an owner (it would show as something else on the queue page), or None."""
    if not name.strip():
        return "an owner name needs a visible character (not only whitespace)"
    for char in name:
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            what = unicodedata.name(char, "a control character")
            return (
                f"an owner name may not hold U+{ord(char):04X} ({what}): controls, bidi overrides and zero-width "
                "characters are refused"
            )
    return None


def check_owner(name: str) -> str:
    """pydantic's AfterValidator for the body's `owner`."""
    if problem := owner_problem(name):
        raise ValueError(problem)
    return name


@dataclass(frozen=True)
class ArtistToken:
    """One [auth] entry: a token, the owner it names, the highest priority its jobs may ask for."""

    owner: str
    token: str
    max_priority: int = 0

    def __repr__(self) -> str:  # never the token itself, in a log or a traceback
        return f"ArtistToken(owner={self.owner!r}, max_priority={self.max_priority})"

    def claim(self, owner: str | None, priority: int | None) -> tuple[str, int]:
        """(owner, priority) for a job sent with this token; RequestError (403) when the body claims more."""
        if owner is not None and owner != self.owner:
            raise RequestError(
                "forbidden_owner",
                f"this token is {self.owner!r}'s: a job sent with it cannot be from {owner!r} "
                "(leave owner out, or use that artist's own token)",
            )
        if priority is not None and priority > self.max_priority:
            raise RequestError(
                "forbidden_priority",
                f"priority {priority} is above the {self.max_priority} allowed to {self.owner!r}'s token "
                "([auth] max_priority on the server)",
            )
        return self.owner, min(0, self.max_priority) if priority is None else priority
