"""Which provider key a call uses: the platform's, or the organization's own (BYOK).

A BYOK call reserves and charges no credit; it is logged with its would-be cost.
"""

from __future__ import annotations

from dataclasses import dataclass

from apps.accounts.models import Organization

from .providers.registry import platform_key


@dataclass(frozen=True)
class Credential:
    secret: str
    byok: bool = False


async def credential_for(*, org: Organization, provider: str) -> Credential:
    """The key to call ``provider`` with for ``org``: its own when it stored one, else ours."""
    return Credential(secret=platform_key(provider))
