"""Every write to routing policies: create, edit (a new version), roll back, delete, set the
organization's default, pin an API key.

Owners and admins write; each service is one transaction that validates *before* it writes, so a
refused document leaves nothing behind, and records its audit event in the same transaction.
Writes of one organization's policies are serialized on its row: ``extends`` loops and the
single default are checked against what is really stored, not against a concurrent edit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import transaction
from django.db.models import Max

from apps.accounts.models import Organization, Role, User
from apps.accounts.services import audit_record, membership_require
from llmwise.errors import ApplicationError, Conflict, NotFound

from .models import ApiKeyPolicyPin, RoutingPolicy, RoutingPolicyVersion
from .policy_selectors import (
    api_key_of,
    policy_cache_clear,
    policy_catalog,
    routing_policy_dependents,
    routing_policy_documents,
    routing_policy_of,
)
from .routing.policies import (
    POLICY_NAME,
    POLICY_NAME_MAX_CHARS,
    PolicyInvalid,
    PolicyIssue,
    policy_check_providers,
    policy_compile,
    policy_document_validate,
    policy_text_parse,
)

DESCRIPTION_MAX_CHARS = 300
NOTE_MAX_CHARS = 200


def _lock_org(org: Organization) -> None:
    Organization.objects.select_for_update().filter(pk=org.pk).first()
    # Every write starts here: forget which policy this org's requests run under, now and again
    # once committed (a request in between may have cached the state being replaced).
    policy_cache_clear(org=org)
    transaction.on_commit(lambda: policy_cache_clear(org=org))


def _parsed(*, text: str | None, document: Any) -> tuple[Any, Mapping[str, int]]:
    if text is not None:
        parsed = policy_text_parse(text=text)
        return parsed.document, parsed.lines
    if document is None:
        raise ApplicationError("Give the policy document.", code="invalid_policy", param="document")
    return document, {}


def _line_of(lines: Mapping[str, int], path: str) -> int | None:
    return lines.get(path, lines.get(""))


def _validated(
    *, org: Organization, name: str, document: Any, lines: Mapping[str, int]
) -> dict[str, Any]:
    """``document`` checked on its own, then against the org's other policies as they would be
    after saving it: its ``extends`` chain and every policy that extends it must still resolve
    (no loop, no missing parent, not too deep)."""
    catalog = policy_catalog()
    valid = policy_document_validate(document=document, catalog=catalog, lines=lines)
    documents: dict[str, Any] = dict(routing_policy_documents(org=org))
    documents[name] = valid
    try:
        effective = policy_compile(name=name, document=valid, lookup=documents.get)
    except PolicyInvalid as exc:
        raise PolicyInvalid(
            [PolicyIssue(i.path, i.message, _line_of(lines, i.path)) for i in exc.issues]
        ) from exc
    policy_check_providers(document=valid, effective=effective, catalog=catalog, lines=lines)
    for other, other_document in documents.items():
        if other == name or not isinstance(other_document, dict):
            continue
        if "extends" not in other_document:
            continue
        try:
            policy_compile(name=other, document=other_document, lookup=documents.get)
        except PolicyInvalid as exc:
            issue = exc.issues[0]
            raise PolicyInvalid(
                [
                    PolicyIssue(
                        "extends" if "extends" in valid else "",
                        f"policy {other!r} extends this one and would break: {issue.message}",
                        _line_of(lines, "extends"),
                    )
                ]
            ) from exc
    return valid


def _clean_name(name: str) -> str:
    cleaned = name.strip().lower()
    if not POLICY_NAME.match(cleaned):
        raise ApplicationError(
            f"A policy name is 1 to {POLICY_NAME_MAX_CHARS} lower-case letters, digits and "
            "hyphens, starting and ending with a letter or digit.",
            code="invalid_policy_name",
            param="name",
        )
    return cleaned


def _clean_text(value: str, *, limit: int, param: str) -> str:
    cleaned = value.strip()
    if len(cleaned) > limit:
        raise ApplicationError(f"At most {limit} characters.", param=param)
    return cleaned


def _add_version(
    *, policy: RoutingPolicy, document: dict[str, Any], actor: User | None, note: str
) -> RoutingPolicyVersion:
    number = (policy.versions.aggregate(last=Max("number"))["last"] or 0) + 1
    version = RoutingPolicyVersion.objects.create(
        policy=policy, number=number, document=document, created_by=actor, note=note
    )
    policy.current_version = version
    policy.save(update_fields=["current_version", "updated_at"])
    return version


def _target(policy: RoutingPolicy) -> str:
    return f"routing_policy:{policy.name}"


@transaction.atomic
def routing_policy_create(
    *,
    org: Organization,
    actor: User | None,
    name: str,
    description: str = "",
    text: str | None = None,
    document: Any = None,
    is_default: bool = False,
    note: str = "",
) -> RoutingPolicy:
    """Create ``org``'s policy ``name`` with its first version (JSON/YAML ``text`` or a parsed
    ``document``); optionally make it the organization's default."""
    membership_require(org=org, user=actor, role=Role.ADMIN)
    _lock_org(org)
    name = _clean_name(name)
    description = _clean_text(description, limit=DESCRIPTION_MAX_CHARS, param="description")
    note = _clean_text(note, limit=NOTE_MAX_CHARS, param="note")
    if RoutingPolicy.objects.filter(organization=org, name=name).exists():
        raise Conflict(
            f"There is already a policy named {name!r}.", code="policy_exists", param="name"
        )
    raw, lines = _parsed(text=text, document=document)
    valid = _validated(org=org, name=name, document=raw, lines=lines)
    if is_default:
        RoutingPolicy.objects.filter(organization=org, is_default=True).update(is_default=False)
    policy = RoutingPolicy.objects.create(
        organization=org,
        name=name,
        description=description,
        is_default=is_default,
        created_by=actor,
    )
    version = _add_version(policy=policy, document=valid, actor=actor, note=note or "created")
    audit_record(
        org=org,
        actor=actor,
        action="routing_policy.create",
        target=_target(policy),
        data={"version": version.number, "is_default": is_default},
    )
    return policy


@transaction.atomic
def routing_policy_update(
    *,
    org: Organization,
    actor: User | None,
    policy_id: int,
    text: str | None = None,
    document: Any = None,
    description: str | None = None,
    note: str = "",
) -> RoutingPolicy:
    """Edit a policy: a changed document becomes a new version (versions are never modified);
    ``description`` is a plain field. Nothing changed, nothing recorded."""
    membership_require(org=org, user=actor, role=Role.ADMIN)
    _lock_org(org)
    policy = routing_policy_of(org=org, policy_id=policy_id)
    note = _clean_text(note, limit=NOTE_MAX_CHARS, param="note")
    changes: dict[str, Any] = {}
    if description is not None:
        description = _clean_text(description, limit=DESCRIPTION_MAX_CHARS, param="description")
        if description != policy.description:
            changes["description"] = {"from": policy.description, "to": description}
            policy.description = description
            policy.save(update_fields=["description", "updated_at"])
    if text is not None or document is not None:
        raw, lines = _parsed(text=text, document=document)
        valid = _validated(org=org, name=policy.name, document=raw, lines=lines)
        current = policy.current_version
        if current is None or valid != current.document:
            version = _add_version(policy=policy, document=valid, actor=actor, note=note)
            changes["version"] = version.number
            changes["previous_version"] = current.number if current is not None else None
    if changes:
        audit_record(
            org=org,
            actor=actor,
            action="routing_policy.update",
            target=_target(policy),
            data=changes,
        )
    return policy


@transaction.atomic
def routing_policy_rollback(
    *, org: Organization, actor: User | None, policy_id: int, version_number: int
) -> RoutingPolicyVersion:
    """Make an earlier version's document current again, as a *new* version (history stays
    append-only). The old document is validated again: the catalog or the other policies may
    have changed since."""
    membership_require(org=org, user=actor, role=Role.ADMIN)
    _lock_org(org)
    policy = routing_policy_of(org=org, policy_id=policy_id)
    old = policy.versions.filter(number=version_number).first()
    if old is None:
        raise NotFound(f"Version {version_number} not found.", code="policy_version_not_found")
    current = policy.current_version
    if current is not None and current.pk == old.pk:
        raise ApplicationError(
            f"Version {version_number} is already the current version.", code="already_current"
        )
    try:
        valid = _validated(org=org, name=policy.name, document=old.document, lines={})
    except PolicyInvalid as exc:
        raise PolicyInvalid(
            [
                PolicyIssue(i.path, f"version {version_number} no longer validates: {i.message}")
                for i in exc.issues
            ]
        ) from exc
    version = _add_version(
        policy=policy, document=valid, actor=actor, note=f"rollback to version {old.number}"
    )
    audit_record(
        org=org,
        actor=actor,
        action="routing_policy.rollback",
        target=_target(policy),
        data={
            "version": version.number,
            "restored_version": old.number,
            "previous_version": current.number if current is not None else None,
        },
    )
    return version


@transaction.atomic
def routing_policy_delete(*, org: Organization, actor: User | None, policy_id: int) -> None:
    """Delete a policy, its versions and its key pins. Refused while another policy extends it."""
    membership_require(org=org, user=actor, role=Role.ADMIN)
    _lock_org(org)
    policy = routing_policy_of(org=org, policy_id=policy_id)
    dependents = routing_policy_dependents(org=org, name=policy.name)
    if dependents:
        raise Conflict(
            f"Policy {policy.name!r} is extended by {', '.join(map(repr, dependents))}; "
            "change those first.",
            code="policy_in_use",
        )
    unpinned = sorted(policy.pins.values_list("api_key__prefix", flat=True))
    audit_record(
        org=org,
        actor=actor,
        action="routing_policy.delete",
        target=_target(policy),
        data={
            "was_default": policy.is_default,
            "versions": policy.versions.count(),
            "unpinned_keys": unpinned,
        },
    )
    policy.delete()


@transaction.atomic
def routing_policy_set_default(
    *, org: Organization, actor: User | None, policy_id: int | None
) -> RoutingPolicy | None:
    """Make a policy the organization's default (``None``: no default). At most one is."""
    membership_require(org=org, user=actor, role=Role.ADMIN)
    _lock_org(org)
    policy = routing_policy_of(org=org, policy_id=policy_id) if policy_id is not None else None
    previous = RoutingPolicy.objects.filter(organization=org, is_default=True).first()
    if (previous.pk if previous else None) == (policy.pk if policy else None):
        return policy
    RoutingPolicy.objects.filter(organization=org, is_default=True).update(is_default=False)
    if policy is not None:
        policy.is_default = True
        policy.save(update_fields=["is_default", "updated_at"])
    audit_record(
        org=org,
        actor=actor,
        action="routing_policy.set_default",
        target=_target(policy) if policy is not None else "",
        data={
            "default": policy.name if policy is not None else None,
            "previous": previous.name if previous is not None else None,
        },
    )
    return policy


@transaction.atomic
def api_key_policy_pin(
    *, org: Organization, actor: User | None, api_key_id: int, policy_id: int | None
) -> ApiKeyPolicyPin | None:
    """Pin one of ``org``'s API keys to one of its policies (``None``: unpin)."""
    membership_require(org=org, user=actor, role=Role.ADMIN)
    _lock_org(org)
    key = api_key_of(org=org, api_key_id=api_key_id)
    policy = routing_policy_of(org=org, policy_id=policy_id) if policy_id is not None else None
    pin = ApiKeyPolicyPin.objects.filter(api_key=key).select_related("policy").first()
    previous = pin.policy if pin is not None else None
    if (previous.pk if previous else None) == (policy.pk if policy else None):
        return pin
    if policy is not None and not key.is_usable:
        raise ApplicationError(
            f"The key {key.name!r} is {key.status}; it makes no more calls to route.",
            code="api_key_not_usable",
        )
    if policy is None:
        assert pin is not None  # noqa: S101 - previous differs from None, so a pin exists
        pin.delete()
        pin = None
    elif pin is None:
        pin = ApiKeyPolicyPin.objects.create(api_key=key, policy=policy, created_by=actor)
    else:
        pin.policy = policy
        pin.created_by = actor
        pin.save(update_fields=["policy", "created_by"])
    audit_record(
        org=org,
        actor=actor,
        action="routing_policy.pin",
        target=f"api_key:{key.prefix}",
        data={
            "api_key": key.prefix,
            "key_name": key.name,
            "policy": policy.name if policy is not None else None,
            "previous": previous.name if previous is not None else None,
        },
    )
    return pin
