"""Which proxy a provider's requests go through: the standard environment variables
(HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY, either case), as curl and requests read them.

A loopback host never goes through a proxy — the simulator and local servers answer on this
machine, and a corporate proxy would either fail them or see their traffic. The session is
opened with trust_env=False so this function is the one place the decision is made.
"""

from __future__ import annotations

import urllib.request
from urllib.parse import urlsplit

from evalrun.config.models import is_loopback


def proxy_for(url: str) -> str | None:
    """The proxy URL for requests to `url`, or None to connect directly."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if is_loopback(host):
        return None
    proxies = urllib.request.getproxies_environment()
    # NO_PROXY; this function is in urllib but not in typeshed's stubs
    if urllib.request.proxy_bypass_environment(host, proxies):  # type: ignore[attr-defined]
        return None
    return proxies.get(parts.scheme) or proxies.get("all") or None
