"""The Content-Security-Policy header (django-csp 4), without a thread hop in async stacks.

django-csp's ``CSPMiddleware`` is a ``MiddlewareMixin``: in an async stack Django runs its
``process_request``/``process_response`` through ``sync_to_async``, two thread hops on every
gateway request. Both only read settings and set attributes/headers (no I/O), so this wrapper
calls them directly in whichever mode Django runs it. The policy itself is in settings
(``CONTENT_SECURITY_POLICY``, base.py's security section); a response that already carries its
own policy (the Redoc page) keeps it.
"""

from __future__ import annotations

from csp.constants import HEADER, HEADER_REPORT_ONLY
from csp.middleware import CSPMiddleware
from django.conf import settings
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


class ApiContentSecurityPolicyMiddleware(ContentSecurityPolicyMiddleware):
    """The same headers for the chat endpoints' lean path (llmwise/http.py), computed once.

    Their JSON and event-stream answers use no nonce and no per-view policy, so django-csp would
    build the same header strings for every one of them (about 3% of a call's CPU): they are
    built once per settings object and copied onto each response.
    """

    def __init__(self, get_response: GetResponse) -> None:
        super().__init__(get_response)
        self._built: tuple[object, object, dict[str, str]] | None = None

    def before(self, request: HttpRequest) -> None:
        return None  # no nonce on this path

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        policy = getattr(settings, "CONTENT_SECURITY_POLICY", None)
        report_only = getattr(settings, "CONTENT_SECURITY_POLICY_REPORT_ONLY", None)
        built = self._built
        if built is None or built[0] is not policy or built[1] is not report_only:
            sample = HttpResponse()
            self.csp.process_response(request, sample)
            headers = {
                name: sample[name] for name in (HEADER, HEADER_REPORT_ONLY) if name in sample
            }
            self._built = built = (policy, report_only, headers)
        if not getattr(response, "_csp_exempt", False):
            for name, value in built[2].items():
                if name not in response:
                    response[name] = value
        return response
