"""The Content-Security-Policy header (django-csp 4), without a thread hop in async stacks.

django-csp's ``CSPMiddleware`` is a ``MiddlewareMixin``: in an async stack Django runs its
``process_request``/``process_response`` through ``sync_to_async``, two thread hops on every
gateway request. Both only read settings and set attributes/headers (no I/O), so this wrapper
calls them directly in whichever mode Django runs it. The policy itself is in settings
(``CONTENT_SECURITY_POLICY``, base.py's security section); a response that already carries its
own policy (the Redoc page) keeps it.
"""

from __future__ import annotations

from csp.middleware import CSPMiddleware
from django.http import HttpRequest, HttpResponse

from llmwise.middleware import DualModeMiddleware, GetResponse


class ContentSecurityPolicyMiddleware(DualModeMiddleware):
    def __init__(self, get_response: GetResponse) -> None:
        super().__init__(get_response)
        self.csp = CSPMiddleware(get_response)

    def before(self, request: HttpRequest) -> None:
        self.csp.process_request(request)

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        # Typed as HttpResponse by DualModeMiddleware; streaming and file responses pass too.
        self.csp.process_response(request, response)
        return response
