"""Per-key and per-organization limits (RPM, TPM, spend cap), checked before a call.

``limits_admit`` runs before anything is reserved or sent and raises a 429 (or 402 for a spend
cap) with ``retry_after``; ``limits_record`` counts what a call really used once it is settled.
"""

from __future__ import annotations

from apps.accounts.models import ApiKey

from .providers.base import Usage


async def limits_admit(*, api_key: ApiKey, prompt_tokens: int, max_tokens: int) -> None:
    """Refuse the call when the key or its organization is over a limit."""


async def limits_record(*, api_key: ApiKey, usage: Usage, cost_micros: int) -> None:
    """Count a settled call against the key's token and spend budgets."""
