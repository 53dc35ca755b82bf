"""Amazon S3 and S3-compatible stores (MinIO, R2, moto...): streaming multipart uploads via obstore, signed
with the connection's keys or with a role's temporary credentials (`assume_role`)."""

from __future__ import annotations

from obstore.store import S3Store

from . import Placement
from .assume_role import RoleCredentials, is_role
from .objectstore import ObjectStoreDestination, client_options, retry_config
from .specs import S3Destination


def build(placement: Placement) -> ObjectStoreDestination:
    spec: S3Destination = placement.spec
    config: dict = {}
    provider = None
    if is_role(placement.secrets):
        provider = RoleCredentials(placement.settings, placement.secrets, spec.region)
        provider()  # assumed now: a refusal fails the export before any upload starts
    elif placement.secrets:  # else obstore takes AWS_* from the environment, as the AWS tools do
        config = {"access_key_id": placement.secrets["access_key_id"],
                  "secret_access_key": placement.secrets["secret_access_key"]}
        if placement.secrets.get("session_token"):
            config["session_token"] = placement.secrets["session_token"]
    if spec.region:
        config["region"] = spec.region
    if spec.endpoint_url:
        config["endpoint"] = spec.endpoint_url
    path_style = spec.path_style if spec.path_style is not None else bool(spec.endpoint_url)
    config["virtual_hosted_style_request"] = not path_style
    if spec.server_side_encryption:
        config["server_side_encryption"] = spec.server_side_encryption
        if spec.kms_key_id:
            config["sse_kms_key_id"] = spec.kms_key_id
    store = S3Store(spec.bucket, config=config, client_options=client_options(placement, spec.endpoint_url),
                    retry_config=retry_config(placement), credential_provider=provider)
    if provider is not None:
        return RoleDestination(placement, store, f"s3://{spec.bucket}", {"Content-Type": placement.content_type},
                               provider)
    return ObjectStoreDestination(placement, store, f"s3://{spec.bucket}",
                                  {"Content-Type": placement.content_type})


class RoleDestination(ObjectStoreDestination):
    """Writes with a role's credentials: a renewal that fails mid-export is reported as STS's own refusal
    (not retried) or outage (retried), not as the credentials error obstore makes of it."""

    def __init__(self, placement: Placement, store: S3Store, uri_root: str, attributes: dict,
                 credentials: RoleCredentials) -> None:
        super().__init__(placement, store, uri_root, attributes)
        self.credentials = credentials

    def explain(self, exc: Exception) -> Exception:
        return self.credentials.failure or super().explain(exc)
