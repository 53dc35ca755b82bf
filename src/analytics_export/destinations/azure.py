"""Azure Blob Storage (and Azurite): block blobs staged while the export runs, committed at the end, via obstore."""

from __future__ import annotations

from obstore.store import AzureStore

from ..errors import Invalid
from . import Placement
from .objectstore import ObjectStoreDestination, client_options, retry_config
from .specs import AzureDestination


def build(placement: Placement) -> ObjectStoreDestination:
    spec: AzureDestination = placement.spec
    config: dict = {}
    if placement.secrets:  # else obstore takes AZURE_STORAGE_* from the environment
        config["account_name"] = placement.secrets["account_name"]
        if placement.secrets.get("account_key"):
            config["account_key"] = placement.secrets["account_key"]
        else:
            config["sas_key"] = placement.secrets["sas_token"].lstrip("?")
    if spec.account_url:
        config["endpoint"] = spec.account_url.rstrip("/")
    elif not placement.secrets:
        raise Invalid("an azure destination needs account_url or a connection naming the account")
    store = AzureStore(spec.container, config=config, client_options=client_options(placement, spec.account_url),
                       retry_config=retry_config(placement))
    return ObjectStoreDestination(placement, store, f"az://{spec.container}",
                                  {"Content-Type": placement.content_type})
