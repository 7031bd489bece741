"""What a config must not hold: keys written in headers, a key where a variable name belongs,
header values that cannot travel in HTTP. Checked at validate, so nothing is sent.

An error here never repeats the offending value: it may be a key.
"""

from __future__ import annotations

import re

# Header names that carry a credential. `Authorization` was the first; the others are the
# same secret under another vendor's name (proxies, Azure APIM, cookies, token headers).
CREDENTIAL_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "api-key",
        "x-api-key",
        "x-goog-api-key",
        "x-auth-token",
        "x-access-token",
        "x-amz-security-token",
        "x-functions-key",
        "ocp-apim-subscription-key",
        "cookie",
        "set-cookie",
    }
)
# and any header whose name says it is one (x-my-api-key, x-service-token, x-client-secret, …)
_CREDENTIAL_WORDS = re.compile(r"(?:^|[-_])(?:api[-_]?key|token|secret|password|passwd|credentials?)$", re.IGNORECASE)

# Well-known key prefixes: OpenAI/Anthropic/DeepSeek (sk-), Google (AIza), Groq (gsk_), xAI,
# Hugging Face (hf_), GitHub (ghp_, github_pat_), AWS access keys (AKIA), Slack (xox?-).
_KEY_PREFIX = re.compile(r"^(?:sk-|sk_|AIza|gsk_|xai-|hf_|ghp_|gho_|github_pat_|AKIA|ASIA|xox[abprs]-|pk_|rk_)")
_AUTH_SCHEME = re.compile(r"^(?:Bearer|Basic)\s+\S", re.IGNORECASE)
_TOKEN_HEADER_CHARS = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token


def is_credential_header(name: str) -> bool:
    """Whether a header of this name carries a secret (so it must not be written in a config)."""
    return name.lower() in CREDENTIAL_HEADERS or bool(_CREDENTIAL_WORDS.search(name))


def looks_like_key(value: str) -> bool:
    """Whether a string looks like an API key rather than an environment variable's name.

    Variable names are short words (EVOLINK_API_KEY); keys start with a vendor prefix, or are
    long runs mixing lower case, upper case and digits with no word separators."""
    if _KEY_PREFIX.match(value):
        return True
    if len(value) >= 24 and "_" not in value.strip("_"):
        return any(c.islower() for c in value) and any(c.isupper() for c in value) and any(c.isdigit() for c in value)
    return len(value) >= 40 and any(c.isdigit() for c in value) and any(c.islower() for c in value)


def header_problem(name: str, value: str) -> str | None:
    """Why a header cannot be sent as written (None when it can). Says what, never the value."""
    if not _TOKEN_HEADER_CHARS.match(name):
        return f"header name {name!r} is not a valid HTTP header name (letters, digits and -; no spaces or colons)"
    if any(c in value for c in "\r\n\0"):
        return f"header {name!r}: the value holds a line break or NUL, which HTTP headers cannot carry"
    if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value):
        return f"header {name!r}: the value holds a control character"
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return f"header {name!r}: the value has characters outside Latin-1, which HTTP headers cannot carry"
    if _AUTH_SCHEME.match(value.strip()) or _KEY_PREFIX.match(value.strip()):
        return (
            f"header {name!r}: the value is a credential (a Bearer/Basic token or a vendor key), which "
            "would put a secret in the config file; set the key in an environment variable and name it with api_key_env"
        )
    return None
