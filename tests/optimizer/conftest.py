from __future__ import annotations

from dataclasses import dataclass

import pytest

from apps.accounts import services as account_services
from apps.accounts.models import ApiKey
from tests.conftest import Personas

from .history import known_history


@dataclass
class Keys:
    main: ApiKey
    runaway: ApiKey
    main_secret: str


@pytest.fixture
def keys(personas: Personas) -> Keys:
    main = account_services.api_key_create(org=personas.org, name="backend", created_by=None)
    runaway = account_services.api_key_create(org=personas.org, name="batch", created_by=None)
    return Keys(main.api_key, runaway.api_key, main.secret)


@pytest.fixture
def history(personas: Personas, keys: Keys, catalog: None) -> Keys:
    known_history(personas.org, key=keys.main, runaway=keys.runaway)
    return keys


# The gateway's session sandbox (real HTTP upstreams) for the replay lab's calls.
from tests.gateway.conftest import sandbox  # noqa: E402, F401
