"""What a job writes under ``notify:``: its targets (a signed webhook, Slack, an email through
SMTP), each validated by its ``type:`` with errors at its own keys, with its timeout, retries,
backoff and budget, and how it sends a message once.
"""

from __future__ import annotations

import json
import time
from email.utils import parseaddr
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)

from etl import Duration, did_you_mean

from .._deadlines import env_duration
from ._message import Event, Message, _slack_blocks, _slack_escape, signature
from ._transport import _default_headers, _post, _quit, _redacted, _smtp_error

#: What a target notifies unless its `when:` says otherwise (a cancel is someone's own doing).
DEFAULT_EVENTS: tuple[Event, ...] = ("completed", "failed")
#: One attempt's timeout and a notification's budget, unless a target or the environment says.
TIMEOUT, BUDGET = 10.0, 30.0
SIGNATURE_HEADER = "X-Etl-Signature"
TIMESTAMP_HEADER = "X-Etl-Timestamp"


class _Target(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(description="webhook, slack or email")
    when: list[Event] = Field(
        default_factory=lambda: list(DEFAULT_EVENTS),
        min_length=1,
        description="the outcomes to notify: completed, failed, cancelled",
    )
    timeout: Duration | None = Field(
        None,
        description="the longest one attempt waits to connect, and then for each answer (default: "
        "ETL_NOTIFY_TIMEOUT, else 10s)",
    )
    retries: int = Field(
        2, ge=0, le=10, description="attempts after the first when one fails for a reason that may pass"
    )
    backoff: Duration = Field(1.0, description="the wait before the first retry; each further wait doubles")
    budget: Duration | None = Field(
        None,
        description="the most time spent on one notification, attempts and waits included (default: "
        "ETL_NOTIFY_BUDGET, else 30s)",
    )

    @field_validator("timeout", "budget")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("must be more than 0")
        return value

    def limits(self) -> tuple[float, float]:
        """One attempt's timeout and the whole budget, in seconds: the target's, else the
        environment's (``ETL_NOTIFY_TIMEOUT``, ``ETL_NOTIFY_BUDGET``), else 10s and 30s.

        Raises:
            PermanentError: an ``ETL_NOTIFY_…`` variable that is not a duration, naming it.
        """
        timeout = self.timeout if self.timeout is not None else env_duration("ETL_NOTIFY_TIMEOUT") or TIMEOUT
        budget = self.budget if self.budget is not None else env_duration("ETL_NOTIFY_BUDGET") or BUDGET
        return timeout, budget

    def describe(self) -> str:
        """The target in log lines: never a secret (a webhook URL's path often is one)."""
        raise NotImplementedError

    def check(self) -> str:
        """What to check when the target can't be reached."""
        return "check the URL's host and port, that the endpoint is up, and the network in between (firewall, proxy)"

    def send(self, message: Message, timeout: float) -> None:
        """Deliver ``message`` once, within ``timeout`` seconds.

        Raises:
            _Transient: worth another attempt (a connection refused, a timeout, a 5xx).
            Exception: anything else is not retried.
        """
        raise NotImplementedError


def _http_url(value: str) -> str:
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{_redacted(value)!r} is not an http(s) URL; expected e.g. https://hooks.example.com/etl")
    try:
        parts.port  # noqa: B018 (raises ValueError for a port out of range)
    except ValueError:
        raise ValueError("the URL's port is not a number from 0 to 65535") from None
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]


class WebhookTarget(_Target):
    """POST the run summary as JSON, signed with HMAC-SHA256 when a secret is set."""

    type: Literal["webhook"]
    url: HttpUrl = Field(description="the URL to POST to", examples=["https://hooks.example.com/etl"])
    secret: SecretStr | None = Field(
        None, description="sign each request with HMAC-SHA256 of this key (write it as ${VAR})"
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="more request headers (not X-Etl-*, which etl sets)"
    )

    @field_validator("headers")
    @classmethod
    def _not_ours(cls, value: dict[str, str]) -> dict[str, str]:
        reserved = [name for name in value if name.lower().startswith("x-etl-")]
        if reserved:
            raise ValueError(f"{', '.join(reserved)}: X-Etl-* headers are set by etl; use another name")
        return value

    def describe(self) -> str:
        return f"webhook {_redacted(self.url)}"

    def send(self, message: Message, timeout: float) -> None:
        body = message.body
        mine = {name.lower() for name in self.headers}
        headers = {
            **{k: v for k, v in _default_headers().items() if k.lower() not in mine},
            **self.headers,
            "X-Etl-Event": message.event,
            "X-Etl-Delivery": message.delivery,
        }
        if self.secret is not None:
            timestamp = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = signature(self.secret.get_secret_value(), timestamp, body)
        _post(self.url, body, headers, timeout)


class SlackTarget(_Target):
    """A Slack incoming webhook (or a Slack-compatible one: Mattermost, Rocket.Chat, ...)."""

    type: Literal["slack"]
    url: HttpUrl = Field(
        description="the incoming webhook's URL, a credential: write it as ${VAR}",
        examples=["${SLACK_WEBHOOK_URL}"],
    )
    blocks: bool = Field(False, description="add Block Kit blocks with the figures (Slack itself only)")

    def describe(self) -> str:
        return f"slack {_redacted(self.url)}"

    def send(self, message: Message, timeout: float) -> None:
        payload: dict[str, Any] = {"text": _slack_escape(message.text)}
        if self.blocks:
            payload["blocks"] = _slack_blocks(message)
        _post(self.url, json.dumps(payload).encode(), _default_headers(), timeout)


def _address(value: str) -> str:
    if "@" not in parseaddr(value)[1]:
        raise ValueError(f"{value!r} is not an email address; expected e.g. etl@example.com or 'ETL <etl@example.com>'")
    return value


Address = Annotated[str, AfterValidator(_address)]


class EmailTarget(_Target):
    """An email through an SMTP server."""

    type: Literal["email"]
    host: str = Field(min_length=1, description="the SMTP server", examples=["smtp.example.com"])
    port: int | None = Field(None, ge=1, le=65535, description="default 465 with ssl, 587 with starttls, else 25")
    username: str | None = Field(None, description="log in as this user")
    password: SecretStr | None = Field(None, description="and this password (write it as ${VAR})")
    starttls: bool = Field(True, description="upgrade the connection with STARTTLS (fail if the server can't)")
    ssl: bool = Field(False, description="connect over TLS from the start (port 465)")
    sender: Address = Field(description="the From: address", examples=["etl@example.com"])
    to: list[Address] = Field(min_length=1, description="the recipients")

    @model_validator(mode="after")
    def _consistent(self) -> EmailTarget:
        if self.ssl and self.starttls and "starttls" in self.model_fields_set:
            raise ValueError("set ssl: true or starttls: true, not both")
        if (self.username is None) != (self.password is None):
            raise ValueError("set both username and password, or neither")
        return self

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 465 if self.ssl else 587 if self.starttls else 25

    def describe(self) -> str:
        return f"email via {self.host}:{self.effective_port} to {len(self.to)} recipient(s)"

    def check(self) -> str:
        return (
            "check host and port (and ssl or starttls to match the port), that the SMTP server is up, and the "
            "network in between (a firewall; many networks block port 25)"
        )

    def send(self, message: Message, timeout: float) -> None:
        import smtplib
        import ssl
        from email.message import EmailMessage
        from email.utils import formatdate, make_msgid

        mail = EmailMessage()
        mail["Subject"] = message.subject
        mail["From"] = self.sender
        mail["To"] = ", ".join(self.to)
        mail["Date"] = formatdate(localtime=False, usegmt=True)
        mail["Message-ID"] = make_msgid(idstring=message.delivery, domain=message.payload["host"] or None)
        mail["X-Etl-Event"] = message.event
        mail.set_content(message.plain)

        context = ssl.create_default_context()
        client: smtplib.SMTP | None = None
        try:
            if self.ssl:
                client = smtplib.SMTP_SSL(self.host, self.effective_port, timeout=timeout, context=context)
            else:
                client = smtplib.SMTP(self.host, self.effective_port, timeout=timeout)
            if self.starttls and not self.ssl:
                client.starttls(context=context)
            if self.username is not None and self.password is not None:
                client.login(self.username, self.password.get_secret_value())
            client.send_message(mail)
        except Exception as exc:
            if client is not None:
                client.close()
            mapped = _smtp_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc
        _quit(client)


TYPES = {"webhook": WebhookTarget, "slack": SlackTarget, "email": EmailTarget}


def _validate_target(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Validate a target by its ``type:``, with errors located at its own keys.

    Pydantic's discriminated union would put the tag in each error's location (``notify[0].
    webhook.url``) and name no choices for a wrong tag; this says which types exist, and which
    keys the chosen type has.
    """
    if not isinstance(value, dict):
        return handler(value)
    kind = value.get("type")
    if kind is None:
        raise ValueError(f"missing `type:`; expected one of: {', '.join(TYPES)}")
    model = TYPES.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ValueError(f"type {kind!r} is not one of: {', '.join(TYPES)}{did_you_mean(str(kind), TYPES)}")
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise _named_keys(exc, model) from None


def _named_keys(exc: ValidationError, model: type[BaseModel]) -> ValidationError:
    """``exc`` with each unknown key's error listing the keys of ``model``."""
    valid = list(model.model_fields)
    kind = next(name for name, cls in TYPES.items() if cls is model)
    errors: list[Any] = []
    for item in exc.errors(include_url=False):
        if item["type"] == "extra_forbidden" and len(item["loc"]) == 1:
            key = str(item["loc"][0])
            hint = f"unknown key{did_you_mean(key, valid)} (valid keys with type {kind}: {', '.join(valid)})"
            if key == "True":  # YAML 1.1 reads a bare `on` as true (and the job loader keeps it as "True")
                hint = "`on:` is read by YAML as true; write `when:`, such as `when: [failed]`"
            ctx = {"error": ValueError(hint)}
            item = {"type": "value_error", "loc": item["loc"], "input": item["input"], "ctx": ctx}
        errors.append(item)
    return ValidationError.from_exception_data(exc.title, errors)


Target = Annotated[
    WebhookTarget | SlackTarget | EmailTarget, Field(discriminator="type"), WrapValidator(_validate_target)
]
