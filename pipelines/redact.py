"""Secrets out of everything the project writes down: one scrubber for config dumps, run summaries, MLflow params
and log lines.

The config refuses the obvious credential fields at load time (:data:`pipelines.config.CREDENTIAL_KEYS`); this is
the second line, for what passes that check (``storage.options.az.credential``, an ``Authorization`` header, a
``user:password@`` inside a URL) and for text that was never config (a URI in a log line, an exception message).

- :func:`scrub` is the one function every dump goes through: ``_runs/<run_id>.json``
  (:func:`pipelines.io.output.write_summary`), the bench's MLflow params and config artifact, the job's and the
  bench's log and error lines. It returns a copy in which

  - the value of every mapping key named like a credential is ``"***"`` (:func:`is_secret_key`: *secret*, *token*,
    *password*, *passwd*, *passphrase*, *credential(s)*, *authorization*, *apikey*, *cookie* anywhere in the key;
    *key*, *auth*, *signature*, *sig* as its last word (not after *per*: ``jobs_per_key`` is a count), *auth*
    also as its first; *key* before a final *id*; *connection_string*). Keys are split into words at ``_``, ``-``, ``.``, spaces and camelCase humps, so
    ``max_file_bytes``, ``suppress_tokens``, ``max_new_tokens``, ``api_key_env`` and ``signature_version`` stay as
    they are, while ``X-Api-Key``, ``apiKey``, ``aws_secret_access_key`` and ``sas_token`` are masked. A value that
    is ``None``, ``""`` or a bool is kept (there is nothing to hide, and "not set" is worth seeing);
  - in every string, anywhere, each URL's userinfo becomes ``***`` (``https://user:pw@host/x`` ->
    ``https://***@host/x``), each URL query parameter named like a credential gets the value ``***`` (presigned S3
    URLs' ``X-Amz-Signature``/``X-Amz-Credential``/``X-Amz-Security-Token``, Azure SAS ``sig``), and a
    ``Bearer <token>`` (8 characters or more) becomes ``Bearer ***``;
  - pydantic ``SecretStr``/``SecretBytes`` values are ``"***"``; pydantic models are dumped (``mode="json"``) first.

- :class:`ScrubbingFormatter` / :func:`install_log_scrubber` pass every formatted log line (exception tracebacks
  included) through :func:`scrub_text`.

Standard library only: importable without Ray, MLflow, FastAPI or pydantic, by ``pipelines`` and ``serve_app``.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Optional

#: What a secret value becomes.
MASK = "***"

#: Words that make a key secret wherever they stand in it (``client_secret``, ``sas_token``, ``db_password``).
ANYWHERE_WORDS = frozenset({
    "secret", "secrets", "token", "password", "passwd", "passphrase", "credential", "credentials",
    "authorization", "apikey", "cookie",
})
#: Words that make a key secret only as its last word (``account_key``, ``X-Api-Key``, ``http_auth``, ``sig``):
#: elsewhere they are ordinary words (``key_column``, ``signature_version``, ``api_key_env``).
LAST_WORDS = frozenset({"key", "auth", "signature", "sig"})
#: Words that make a key secret as its first word (``auth_header``).
FIRST_WORDS = frozenset({"auth"})
#: Word sequences that make a key secret wherever they stand (``access_key_id``, ``connection_string``).
SECRET_SEQUENCES = (("key", "id"), ("connection", "string"), ("private", "key"))

_WORD_RE = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
#: A URL: scheme, then everything up to whitespace or a quote/bracket that ends it in prose, JSON or a repr.
_URL_RE = re.compile(r"\b(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<rest>[^\s'\"<>`]+)")
#: ``Bearer <token>`` as in an Authorization header (capital B, a token of 8 characters or more).
_BEARER_RE = re.compile(r"\b(?P<kind>Bearer)\s+(?P<token>[A-Za-z0-9._~+/=\-]{8,})")


def key_words(name: Any) -> list[str]:
    """``name`` split into lower-case words at ``_``, ``-``, ``.``, spaces and camelCase humps
    (``"X-Amz-Security-Token"`` -> ``["x", "amz", "security", "token"]``, ``"APIKey"`` -> ``["api", "key"]``)."""
    return [w.lower() for w in _WORD_RE.findall(str(name))]


def is_secret_key(name: Any) -> bool:
    """Whether a mapping key (or URL query parameter) names a credential; see the module docstring for the rule.

    >>> [is_secret_key(k) for k in ("Authorization", "x-api-key", "max_file_bytes", "suppress_tokens",
    ...                             "max_running_jobs_per_key")]
    [True, True, False, False, False]
    """
    words = key_words(name)
    if not words:
        return False
    per_last = len(words) > 1 and words[-2] == "per"  # a count per key (max_running_jobs_per_key), not a key
    if ANYWHERE_WORDS.intersection(words) or (words[-1] in LAST_WORDS and not per_last) or words[0] in FIRST_WORDS:
        return True
    pairs = set(zip(words, words[1:]))
    return any(seq in pairs for seq in SECRET_SEQUENCES)


def _scrub_query(query: str) -> str:
    out = []
    for part in re.split(r"([&;])", query):
        name, sep, value = part.partition("=")
        out.append(f"{name}={MASK}" if sep and value and is_secret_key(name) else part)
    return "".join(out)


def _scrub_url(match: re.Match) -> str:
    scheme, rest = match.group("scheme"), match.group("rest")
    # the authority ends at the first '/', '?' or '#'; userinfo is everything in it up to its last '@'
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        authority = MASK + authority[authority.rindex("@"):]
    if "?" in tail:
        path, _, query = tail.partition("?")
        query, hash_, fragment = query.partition("#")
        tail = f"{path}?{_scrub_query(query)}{hash_}{fragment}"
    return f"{scheme}://{authority}{tail}"


def scrub_text(text: str) -> str:
    """``text`` with every URL's userinfo and credential-named query values replaced by ``***``, and every
    ``Bearer <token>`` by ``Bearer ***``; the rest unchanged."""
    if "://" in text:
        text = _URL_RE.sub(_scrub_url, text)
    if "Bearer" in text:
        text = _BEARER_RE.sub(lambda m: f"{m.group('kind')} {MASK}", text)
    return text


def _keep_as_is(value: Any) -> bool:
    return value is None or value == "" or isinstance(value, bool)


def scrub(value: Any) -> Any:
    """A copy of ``value`` (a config dump, a run summary, MLflow params...) fit to be written down: mappings,
    lists and tuples are walked; the values of credential-named keys become ``"***"``; strings go through
    :func:`scrub_text`; pydantic secrets become ``"***"`` and pydantic models are dumped first. Other values
    (numbers, bools, None) are returned as they are. Mapping keys are kept (as strings only where they were).

    Args:
        value: any JSON-like tree; it is not modified.

    Returns:
        The scrubbed copy: dicts stay dicts, lists and tuples become lists (as ``json.dumps`` writes both).
    """
    if hasattr(value, "get_secret_value"):  # pydantic SecretStr / SecretBytes
        return MASK
    if hasattr(value, "model_dump") and not isinstance(value, type):  # a pydantic model
        value = value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: (MASK if is_secret_key(k) and not _keep_as_is(v) else scrub(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    if isinstance(value, str):
        return scrub_text(value)
    return value


class ScrubbingFormatter(logging.Formatter):
    """A formatter whose every line (message, arguments and traceback) has gone through :func:`scrub_text`;
    wraps another formatter (its format string and date format are kept)."""

    def __init__(self, inner: Optional[logging.Formatter] = None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return scrub_text(self.inner.format(record))


def install_log_scrubber(logger: Optional[logging.Logger] = None) -> None:
    """Wrap the formatter of each handler of ``logger`` (default: the root logger, after ``logging.basicConfig``)
    in a :class:`ScrubbingFormatter`; calling it again does nothing more."""
    for handler in (logger or logging.getLogger()).handlers:
        if not isinstance(handler.formatter, ScrubbingFormatter):
            handler.setFormatter(ScrubbingFormatter(handler.formatter))
