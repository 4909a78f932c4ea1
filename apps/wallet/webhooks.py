"""The Stripe webhook endpoint. Thin: verify → apply through a service → answer Stripe.

Answers: 400 for anything not provably from Stripe (bad/stale signature, malformed JSON or
event) — nothing changes; 200 for events applied, ignored or about payments that are not ours
(logged; Stripe stops retrying); 503 when we need Stripe to answer a question first and it
can't (Stripe retries later). Events that contradict our records (amount mismatch) get 200 and
an error in the log for a human: retrying would not make them right.
"""

from __future__ import annotations

import logging

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from llmwise.errors import ApplicationError, NotFound, error_body

from . import services, stripe_gateway

logger = logging.getLogger(__name__)


def _rejected(request: HttpRequest, message: str, status: int = 400) -> JsonResponse:
    body = error_body(
        message=message,
        error_type="invalid_request_error",
        code="invalid_webhook",
        request_id=getattr(request, "request_id", None),
    )
    return JsonResponse(body, status=status)


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    try:
        event = stripe_gateway.event_verify(
            payload=request.body, signature=request.headers.get("Stripe-Signature", "")
        )
    except stripe_gateway.WebhookRejected as exc:
        logger.warning("stripe webhook rejected: %s", exc)
        return _rejected(request, str(exc))
    event_id, event_type = event.get("id"), event["type"]
    try:
        outcome = services.stripe_event_process(event=event)
    except NotFound as exc:
        logger.warning("stripe event %s (%s) ignored: %s", event_id, event_type, exc.message)
        outcome = "ignored_unknown"
    except ApplicationError as exc:
        logger.error("stripe event %s (%s) NOT applied: %s", event_id, event_type, exc.message)
        outcome = "rejected"
    except stripe_gateway.StripeUnavailable as exc:
        logger.warning("stripe event %s (%s) deferred: %s", event_id, event_type, exc)
        return _rejected(request, "Stripe is unavailable; retry later.", status=503)
    except (KeyError, TypeError, ValueError) as exc:
        logger.warning("stripe event %s (%s) malformed: %r", event_id, event_type, exc)
        return _rejected(request, "The event object is malformed.")
    logger.info("stripe event %s (%s): %s", event_id, event_type, outcome)
    return JsonResponse({"received": True, "event": event_id, "outcome": outcome})
