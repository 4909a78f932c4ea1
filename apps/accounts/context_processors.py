from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from . import selectors


def organization(request: HttpRequest) -> dict[str, Any]:
    """The current membership and the switcher's list, for the dashboard layout."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {
        "current_membership": getattr(request, "membership", None),
        "user_memberships": lambda: list(selectors.memberships_of(user=user)),
    }
