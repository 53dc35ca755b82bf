"""S3 credentials by role (docs/assume-role.md): this server's own keys call sts:AssumeRole for the
connection's role, with its external ID, and obstore signs with the temporary credentials it gets.
They are fetched again `sts_refresh_margin_seconds` before they expire, so an export that outlasts
the session goes on. The STS client gets explicit keys, endpoint and region: nothing looks for
credentials elsewhere (a metadata server, the environment, ~/.aws)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from ..errors import ExportError, Invalid, Rejected, Upload

if TYPE_CHECKING:
    from ..config import Settings

DEFAULT_SECONDS = 3600
"""A session's duration when the connection names none: AssumeRole's default, and a role's default cap."""

REFUSALS = {
    "AccessDenied": "the role's trust policy must allow this server's principal (ANALYTICS_EXPORT_STS_ACCESS_KEY_ID) "
                    "to call sts:AssumeRole, and its sts:ExternalId condition must equal the connection's "
                    "external_id",
    "InvalidClientTokenId": "the server's STS keys (ANALYTICS_EXPORT_STS_ACCESS_KEY_ID) are not valid",
    "SignatureDoesNotMatch": "the server's STS secret (ANALYTICS_EXPORT_STS_SECRET_ACCESS_KEY) does not match its key",
    "ValidationError": "check the connection's role_arn, and that its session_duration is within the role's "
                       "maximum session duration",
    "RegionDisabledException": "STS is not activated in this region for the account: activate it, or set "
                               "ANALYTICS_EXPORT_STS_REGION",
    "ExpiredTokenException": "the server's STS keys have expired",
}
"""STS error codes another attempt will not fix, with what to fix."""


def is_role(secrets: dict[str, str]) -> bool:
    return bool(secrets.get("role_arn"))


def check_usable(settings: Settings, secrets: dict[str, str]) -> None:
    """Invalid unless this server can assume the role `secrets` names, for as long as a session lasts."""
    if settings.sts_access_key_id is None or settings.sts_secret_access_key is None:
        raise Invalid("an s3 connection with role_arn needs this server's own AWS keys to assume the role: set "
                      "ANALYTICS_EXPORT_STS_ACCESS_KEY_ID and ANALYTICS_EXPORT_STS_SECRET_ACCESS_KEY "
                      "(docs/assume-role.md)")
    if session_seconds(secrets) <= settings.sts_refresh_margin_seconds:
        raise Invalid("the connection's session_duration must be longer than this server's "
                      f"ANALYTICS_EXPORT_STS_REFRESH_MARGIN_SECONDS ({settings.sts_refresh_margin_seconds})")


def session_seconds(secrets: dict[str, str]) -> int:
    return int(secrets.get("session_duration") or DEFAULT_SECONDS)


class RoleCredentials:
    """obstore's `credential_provider` for an S3Store: the role's temporary credentials, assumed again
    once fewer than `margin` seconds of them are left. Thread-safe: obstore may call it from many."""

    def __init__(self, settings: Settings, secrets: dict[str, str], region: str | None) -> None:
        check_usable(settings, secrets)
        self.settings = settings
        self.secrets = secrets
        self.region = settings.sts_region or region or "us-east-1"
        self.margin = timedelta(seconds=settings.sts_refresh_margin_seconds)
        self.lock = threading.Lock()
        self.current: dict | None = None
        self.failure: ExportError | None = None
        """Why the last renewal failed: obstore reports it as a credentials error without the reason."""

    def __call__(self) -> dict:
        with self.lock:
            if self.current is None or datetime.now(timezone.utc) >= self.current["refresh_at"]:
                try:
                    self.current, self.failure = self._assume(), None
                except ExportError as exc:
                    self.failure = exc
                    raise
            credentials = self.current
        return {"access_key_id": credentials["AccessKeyId"], "secret_access_key": credentials["SecretAccessKey"],
                "token": credentials["SessionToken"], "expires_at": credentials["refresh_at"]}

    def _client(self) -> Any:
        import boto3
        from botocore.config import Config

        config = self.settings.export
        timeout = config.upload_timeout_seconds
        return boto3.session.Session().client(
            "sts", endpoint_url=self.settings.sts_endpoint_url, region_name=self.region,
            aws_access_key_id=self.settings.sts_access_key_id.get_secret_value(),
            aws_secret_access_key=self.settings.sts_secret_access_key.get_secret_value(),
            config=Config(connect_timeout=timeout, read_timeout=timeout,
                          retries={"mode": "standard", "max_attempts": config.upload_retries + 1}))

    def _assume(self) -> dict:
        """AssumeRole once: the credentials with `refresh_at`, or Rejected (not retried) when STS refuses,
        Upload (retried) when it cannot be reached."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self._client().assume_role(
                RoleArn=self.secrets["role_arn"], ExternalId=self.secrets["external_id"],
                RoleSessionName=self.secrets.get("session_name") or "analytics-export",
                DurationSeconds=session_seconds(self.secrets))
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "")
            if code in REFUSALS:
                raise Rejected(f"STS refused AssumeRole of the connection's role_arn ({code}): "
                               f"{REFUSALS[code]}") from None
            raise Upload(f"STS AssumeRole failed ({code or 'no error code'})") from None
        except BotoCoreError as exc:
            raise Upload(f"STS AssumeRole failed: {type(exc).__name__}; check ANALYTICS_EXPORT_STS_ENDPOINT_URL "
                         "and that STS is reachable") from None
        credentials = response["Credentials"]
        credentials["refresh_at"] = credentials["Expiration"].astimezone(timezone.utc) - self.margin
        return credentials
