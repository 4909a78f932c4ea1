"""A small, faithful fake of the part of Stripe we use, as a pure ASGI app (test mode only).

It speaks Stripe's wire format so the official stripe-python client talks to it unchanged
(``STRIPE_API_BASE`` points the client here): form-encoded requests with bracketed nested keys,
``Authorization: Bearer sk_test_…``, ``Idempotency-Key`` replay, JSON objects and Stripe-shaped
errors. It signs webhooks exactly like Stripe (``Stripe-Signature: t=…,v1=HMAC-SHA256(secret,
"{t}.{payload}")``) and POSTs them over real HTTP.

Why not ``localstripe``: it has no Checkout Sessions. Why pure ASGI and not Django views: under
ASGI every sync Django view shares one thread, so a view calling a Django view of the same
server over HTTP would deadlock. This app never touches Django's thread; webhook delivery uses
``httpx.AsyncClient`` so it does not block the event loop either.

Served in the embedded default under ``/_sandbox/stripe/`` (see :func:`mount`), and by the tests
on a loopback port. Endpoints:

* ``POST /v1/checkout/sessions``, ``GET /v1/checkout/sessions[?payment_intent=]``,
  ``GET /v1/checkout/sessions/{id}``, ``POST /v1/checkout/sessions/{id}/expire``
* ``POST /v1/refunds`` (``payment_intent``, optional ``amount``) → ``charge.refunded``
* ``GET /checkout/{id}``: the hosted payment page; its "Pay with test card" button marks the
  session paid, sends ``checkout.session.completed`` and redirects to ``success_url``
* test controls under ``/_control/``: ``POST charges/{id}/dispute``, ``POST events/{id}/deliver``
  (re-deliver, ``?times=N`` concurrently), ``POST deliver-pending``, ``GET events``,
  ``POST config`` (``{"auto_deliver": false}`` holds events back to reorder them)
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import httpx

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

API_VERSION = "2026-10-28.endive"
SESSION_TTL_SECONDS = 24 * 3600
MIN_CHARGE_CENTS = 50
MAX_CHARGE_CENTS = 99_999_999
CURRENCIES = {"usd", "eur", "gbp", "cad", "aud", "jpy", "chf"}
DELIVERY_TIMEOUT_SECONDS = 30.0
_KEY_PART = re.compile(r"\[([^\[\]]*)\]")


class StripeApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str = ""):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": "invalid_request_error", "message": self.message}
        if self.param:
            error["param"] = self.param
        if self.code:
            error["code"] = self.code
        return {"error": error}


def _new_id(prefix: str) -> str:
    return f"{prefix}_test_{secrets.token_urlsafe(18).replace('-', 'x').replace('_', 'y')}"


def decode_form(body: bytes) -> dict[str, Any]:
    """Stripe's encoding: ``a[b][0][c]=v`` → ``{"a": {"b": [{"c": "v"}]}}``."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(body.decode(), keep_blank_values=True):
        head, _, rest = key.partition("[")
        parts = [head, *_KEY_PART.findall("[" + rest)] if rest else [head]
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return _listify(root)


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    items = {k: _listify(v) for k, v in node.items()}
    if items and all(k.isdigit() for k in items):
        return [items[k] for k in sorted(items, key=int)]
    return items


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header for ``payload``, computed as Stripe does."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def _int(value: Any, param: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise StripeApiError(400, f"Invalid integer: {value}", param=param) from None


class StripeSandbox:
    """The fake Stripe account: its objects, events and webhook endpoint, kept in memory."""

    def __init__(self, *, webhook_url: str, webhook_secret: str, auto_deliver: bool = True):
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.auto_deliver = auto_deliver
        self.sessions: dict[str, dict[str, Any]] = {}
        self.payment_intents: dict[str, dict[str, Any]] = {}
        self.charges: dict[str, dict[str, Any]] = {}
        self.events: dict[str, dict[str, Any]] = {}
        self.pending: list[str] = []  # events not yet delivered while auto_deliver is off
        self.deliveries: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self._idempotent: dict[str, tuple[int, dict[str, Any]]] = {}

    # --- ASGI ---------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = _Request(scope, body)
        self.requests.append((request.method, request.path))
        try:
            status, headers, content = await self._route(request)
        except StripeApiError as exc:
            status, headers, content = _json(exc.status, exc.body())
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def _route(self, req: _Request) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        parts = [p for p in req.path.split("/") if p]
        method = req.method
        if parts[:1] == ["v1"]:
            self._authenticate(req)
            return await self._api(req, parts[1:], method)
        if parts[:1] == ["checkout"] and len(parts) == 2 and method == "GET":
            return self._hosted_page(req, parts[1])
        if parts[:1] == ["checkout"] and len(parts) == 3 and parts[2] == "pay" and method == "POST":
            return await self._pay(req, parts[1])
        if parts[:1] == ["receipts"] and len(parts) == 2 and method == "GET":
            return self._receipt(parts[1])
        if parts[:1] == ["_control"]:
            return await self._control(req, parts[1:], method)
        raise StripeApiError(404, f"Unrecognized request URL ({method}: {req.path}).")

    # --- API ----------------------------------------------------------------------------------
    def _authenticate(self, req: _Request) -> None:
        auth = req.headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "bearer" or not key.startswith("sk_test_"):
            raise StripeApiError(
                401, "Invalid API Key provided (the sandbox takes sk_test_ keys only)."
            )

    async def _api(
        self, req: _Request, parts: list[str], method: str
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if method == "POST":
            key = req.headers.get("idempotency-key")
            if key and key in self._idempotent:
                status, obj = self._idempotent[key]
                return _json(status, obj, extra=[(b"idempotent-replayed", b"true")])
            status, obj = await self._api_post(req, parts)
            if key:
                self._idempotent[key] = (status, obj)
            return _json(status, obj)
        if method == "GET" and parts == ["checkout", "sessions"]:
            found = list(self.sessions.values())
            payment_intent = req.query.get("payment_intent")
            if payment_intent:
                found = [s for s in found if s["payment_intent"] == payment_intent]
            limit = _int(req.query.get("limit", "10"), "limit")
            found.sort(key=lambda s: s["created"], reverse=True)
            return _json(
                200,
                {
                    "object": "list",
                    "data": found[:limit],
                    "has_more": len(found) > limit,
                    "url": "/v1/checkout/sessions",
                },
            )
        if method == "GET" and parts[:2] == ["checkout", "sessions"] and len(parts) == 3:
            return _json(200, self._session(parts[2]))
        if method == "GET" and parts[:1] == ["charges"] and len(parts) == 2:
            return _json(200, self._charge(parts[1]))
        raise StripeApiError(404, f"Unrecognized request URL ({method}: {req.path}).")

    async def _api_post(self, req: _Request, parts: list[str]) -> tuple[int, dict[str, Any]]:
        params = decode_form(req.body)
        if parts == ["checkout", "sessions"]:
            return 200, self._session_create(req, params)
        if parts[:2] == ["checkout", "sessions"] and parts[3:] == ["expire"]:
            session = self._session(parts[2])
            if session["status"] != "open":
                raise StripeApiError(400, "Only open sessions can be expired.")
            session.update(status="expired", url=None)
            await self._emit("checkout.session.expired", session)
            return 200, session
        if parts == ["refunds"]:
            return 200, await self._refund(params)
        raise StripeApiError(404, f"Unrecognized request URL (POST: {req.path}).")

    def _session(self, session_id: str) -> dict[str, Any]:
        session = self.sessions.get(session_id)
        if session is None:
            raise StripeApiError(
                404, f"No such checkout.session: '{session_id}'", code="resource_missing"
            )
        return session

    def _charge(self, charge_id: str) -> dict[str, Any]:
        charge = self.charges.get(charge_id)
        if charge is None:
            raise StripeApiError(404, f"No such charge: '{charge_id}'", code="resource_missing")
        return charge

    def _session_create(self, req: _Request, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("mode") != "payment":
            raise StripeApiError(400, "The sandbox supports mode=payment only.", param="mode")
        for url_param in ("success_url", "cancel_url"):
            if not str(params.get(url_param, "")).startswith(("http://", "https://")):
                raise StripeApiError(400, f"Not a valid URL: {url_param}", param=url_param)
        line_items = params.get("line_items")
        if not isinstance(line_items, list) or not line_items:
            raise StripeApiError(400, "Missing required param: line_items.", param="line_items")
        currency, total, names = None, 0, []
        for index, item in enumerate(line_items):
            param = f"line_items[{index}]"
            price = item.get("price_data") if isinstance(item, dict) else None
            if not isinstance(price, dict):
                raise StripeApiError(400, "price_data is required.", param=f"{param}[price_data]")
            item_currency = str(price.get("currency", "")).lower()
            if item_currency not in CURRENCIES:
                raise StripeApiError(
                    400,
                    f"Invalid currency: {item_currency}",
                    param=f"{param}[price_data][currency]",
                )
            if currency not in (None, item_currency):
                raise StripeApiError(400, "All line items must share one currency.", param=param)
            currency = item_currency
            unit = _int(price.get("unit_amount"), f"{param}[price_data][unit_amount]")
            quantity = _int(item.get("quantity", "1"), f"{param}[quantity]")
            if unit < 0 or quantity < 1:
                raise StripeApiError(400, "Amounts must be positive.", param=param)
            total += unit * quantity
            product = price.get("product_data") or {}
            names.append(str(product.get("name", "Item")))
        if not MIN_CHARGE_CENTS <= total <= MAX_CHARGE_CENTS:
            raise StripeApiError(
                400,
                "The Checkout Session's total amount must be between $0.50 and $999,999.99.",
                param="line_items",
                code="amount_too_small" if total < MIN_CHARGE_CENTS else "amount_too_large",
            )
        now = int(time.time())
        session_id = _new_id("cs")
        session: dict[str, Any] = {
            "id": session_id,
            "object": "checkout.session",
            "amount_subtotal": total,
            "amount_total": total,
            "cancel_url": params["cancel_url"],
            "client_reference_id": params.get("client_reference_id"),
            "created": now,
            "currency": currency,
            "customer_email": params.get("customer_email"),
            "expires_at": now + SESSION_TTL_SECONDS,
            "livemode": False,
            "metadata": params.get("metadata") or {},
            "mode": "payment",
            "payment_intent": None,
            "payment_status": "unpaid",
            "status": "open",
            "submit_type": params.get("submit_type"),
            "success_url": params["success_url"],
            "url": f"{req.base_url}/checkout/{session_id}",
            # Not part of Stripe's object; kept aside for the payment intent created on payment.
            "_pi_metadata": (params.get("payment_intent_data") or {}).get("metadata") or {},
            "_names": names,
        }
        self.sessions[session_id] = session
        return _public(session)

    async def _refund(self, params: dict[str, Any]) -> dict[str, Any]:
        payment_intent = self.payment_intents.get(str(params.get("payment_intent", "")))
        if payment_intent is None:
            raise StripeApiError(400, "No such payment_intent.", param="payment_intent")
        charge = self.charges[payment_intent["latest_charge"]]
        left = charge["amount"] - charge["amount_refunded"]
        amount = _int(params.get("amount", left), "amount")
        if not 0 < amount <= left:
            raise StripeApiError(
                400, "Refund amount is greater than unrefunded amount.", param="amount"
            )
        refund = {
            "id": _new_id("re"),
            "object": "refund",
            "amount": amount,
            "charge": charge["id"],
            "currency": charge["currency"],
            "payment_intent": payment_intent["id"],
            "status": "succeeded",
            "created": int(time.time()),
        }
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        charge["refunds"]["data"].insert(0, refund)
        await self._emit("charge.refunded", charge)
        return refund

    # --- the hosted payment page --------------------------------------------------------------
    def _hosted_page(self, req: _Request, session_id: str) -> tuple[int, list[Any], bytes]:
        session = self._session(session_id)
        amount = f"{session['amount_total'] / 100:,.2f} {str(session['currency']).upper()}"
        if session["status"] != "open":
            notice = f"This checkout session is {session['status']}."
            return _html(200, _page("Checkout", f"<p>{html.escape(notice)}</p>"))
        declined = req.query.get("declined") == "1"
        esc = html.escape
        body = f"""
<p class="badge">TEST MODE</p>
<h1>{esc(", ".join(session["_names"]))}</h1>
<p class="amount">{esc(amount)}</p>
{'<p class="error" role="alert">Your card was declined.</p>' if declined else ""}
<form method="post" action="{esc(req.root_path)}/checkout/{esc(session_id)}/pay">
  <label>Email <input name="email" value="{esc(session["customer_email"] or "")}"></label>
  <label>Card number <input name="card" value="4242 4242 4242 4242"></label>
  <button type="submit" name="card_outcome" value="success">Pay with test card</button>
  <button type="submit" name="card_outcome" value="decline" class="secondary">
    Use a declined card</button>
</form>
<p><a href="{esc(session["cancel_url"])}">Cancel and return</a></p>"""
        return _html(200, _page("Pay " + amount, body))

    async def _pay(self, req: _Request, session_id: str) -> tuple[int, list[Any], bytes]:
        session = self._session(session_id)
        form = decode_form(req.body)
        if form.get("card_outcome") == "decline":
            return (
                303,
                [(b"location", f"{req.root_path}/checkout/{session_id}?declined=1".encode())],
                b"",
            )
        if session["status"] == "open":
            self._complete(session)
            await self._emit("checkout.session.completed", session)
        target = str(session["success_url"]).replace("{CHECKOUT_SESSION_ID}", session_id)
        return 303, [(b"location", target.encode())], b""

    def _complete(self, session: dict[str, Any]) -> None:
        now = int(time.time())
        pi_id, charge_id = _new_id("pi"), _new_id("ch")
        self.payment_intents[pi_id] = {
            "id": pi_id,
            "object": "payment_intent",
            "amount": session["amount_total"],
            "currency": session["currency"],
            "status": "succeeded",
            "latest_charge": charge_id,
            "metadata": session["_pi_metadata"],
            "created": now,
        }
        self.charges[charge_id] = {
            "id": charge_id,
            "object": "charge",
            "amount": session["amount_total"],
            "amount_refunded": 0,
            "currency": session["currency"],
            "paid": True,
            "refunded": False,
            "payment_intent": pi_id,
            "metadata": session["_pi_metadata"],
            "receipt_url": session["url"].rsplit("/checkout/", 1)[0] + f"/receipts/{charge_id}",
            "refunds": {"object": "list", "data": [], "has_more": False},
            "created": now,
        }
        session.update(status="complete", payment_status="paid", payment_intent=pi_id, url=None)

    def _receipt(self, charge_id: str) -> tuple[int, list[Any], bytes]:
        charge = self._charge(charge_id)
        amount = f"{charge['amount'] / 100:,.2f} {str(charge['currency']).upper()}"
        return _html(200, _page("Receipt", f"<h1>Receipt (test mode)</h1><p>{amount} paid.</p>"))

    # --- events and webhooks ------------------------------------------------------------------
    async def _emit(self, event_type: str, obj: dict[str, Any]) -> dict[str, Any]:
        event_id = _new_id("evt")
        event: dict[str, Any] = {
            "id": event_id,
            "object": "event",
            "api_version": API_VERSION,
            "created": int(time.time()),
            "data": {"object": _public(obj)},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": event_type,
        }
        self.events[event_id] = event
        if self.auto_deliver:
            await self.deliver(event_id)
        else:
            self.pending.append(event_id)
        return event

    async def deliver(self, event_id: str, *, signature: str | None = None) -> int:
        """POST one event to the webhook endpoint, signed now; returns the HTTP status."""
        event = self.events[event_id]
        payload = json.dumps(event, indent=2)
        headers = {
            "content-type": "application/json; charset=utf-8",
            "stripe-signature": signature or sign(payload, self.webhook_secret),
            "user-agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        }
        try:
            async with httpx.AsyncClient(timeout=DELIVERY_TIMEOUT_SECONDS) as client:
                response = await client.post(self.webhook_url, content=payload, headers=headers)
            status = response.status_code
        except httpx.HTTPError:
            status = 0
        self.deliveries.append({"event": event_id, "type": event["type"], "status": status})
        return status

    async def _control(
        self, req: _Request, parts: list[str], method: str
    ) -> tuple[int, list[Any], bytes]:
        if parts == ["events"] and method == "GET":
            return _json(200, {"data": list(self.events.values()), "deliveries": self.deliveries})
        if parts == ["config"] and method == "POST":
            config = json.loads(req.body or b"{}")
            if "auto_deliver" in config:
                self.auto_deliver = bool(config["auto_deliver"])
            return _json(200, {"auto_deliver": self.auto_deliver})
        if parts == ["deliver-pending"] and method == "POST":
            pending, self.pending = self.pending, []
            statuses = [await self.deliver(event_id) for event_id in pending]
            return _json(200, {"delivered": pending, "statuses": statuses})
        if parts[:1] == ["events"] and parts[2:] == ["deliver"] and method == "POST":
            if parts[1] not in self.events:
                raise StripeApiError(404, f"No such event: '{parts[1]}'")
            times = _int(req.query.get("times", "1"), "times")
            statuses = await asyncio.gather(*(self.deliver(parts[1]) for _ in range(times)))
            return _json(200, {"statuses": list(statuses)})
        if parts[:1] == ["charges"] and parts[2:] == ["dispute"] and method == "POST":
            charge = self._charge(parts[1])
            dispute = {
                "id": _new_id("dp"),
                "object": "dispute",
                "amount": _int(req.query.get("amount", charge["amount"]), "amount"),
                "charge": charge["id"],
                "currency": charge["currency"],
                "payment_intent": charge["payment_intent"],
                "reason": "fraudulent",
                "status": "needs_response",
                "created": int(time.time()),
            }
            event = await self._emit("charge.dispute.created", dispute)
            return _json(200, {"dispute": dispute, "event": event["id"]})
        raise StripeApiError(404, f"Unknown control endpoint {req.path}")


class _Request:
    def __init__(self, scope: Scope, body: bytes) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.root_path: str = scope.get("root_path", "")
        self.body = body
        self.headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
        }
        self.query = dict(parse_qsl(scope.get("query_string", b"").decode()))
        scheme = scope.get("scheme", "http")
        host = self.headers.get("host", "127.0.0.1")
        self.base_url = f"{scheme}://{host}{self.root_path}"


def _public(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def _json(
    status: int, obj: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    headers = [(b"content-type", b"application/json"), (b"request-id", _new_id("req").encode())]
    return status, headers + (extra or []), json.dumps(obj).encode()


def _html(status: int, text: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    return status, [(b"content-type", b"text/html; charset=utf-8")], text.encode()


def _page(title: str, body: str) -> str:
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} · Stripe sandbox</title>
<style>body{{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem}}
label{{display:block;margin:.75rem 0}}input{{display:block;width:100%;padding:.5rem}}
button{{padding:.6rem 1rem;margin:.5rem .5rem 0 0}}.badge{{color:#b45309;font-weight:bold}}
.amount{{font-size:2rem}}.error{{color:#b91c1c}}</style></head>
<body><main>{body}</main></body></html>"""


class PathMount:
    """Route requests under ``prefix`` to ``mounted`` (with ``root_path`` set), others to ``app``.

    Lifespan messages go to ``app`` only: the sandbox needs no startup.
    """

    def __init__(self, app: ASGIApp, *, prefix: str, mounted: ASGIApp) -> None:
        self.app = app
        self.prefix = prefix.rstrip("/")
        self.mounted = mounted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == self.prefix or path.startswith(self.prefix + "/")):
            scope = dict(
                scope,
                root_path=scope.get("root_path", "") + self.prefix,
                path=path[len(self.prefix) :] or "/",
            )
            await self.mounted(scope, receive, send)
            return
        await self.app(scope, receive, send)
