"""Azure Blob Storage (and Azurite): block blobs staged while the export runs, committed at the end, via obstore."""

from __future__ import annotations

from obstore.store import AzureStore

from ..errors import Invalid
from . import Target
from .objectstore import ObjectStoreDestination, client_options, retry_config
from .specs import AzureDestination


def build(target: Target) -> ObjectStoreDestination:
    spec: AzureDestination = target.request.destination
    config: dict = {}
    if target.secrets:  # else obstore takes AZURE_STORAGE_* from the environment
        config["account_name"] = target.secrets["account_name"]
        if target.secrets.get("account_key"):
            config["account_key"] = target.secrets["account_key"]
        else:
            config["sas_key"] = target.secrets["sas_token"].lstrip("?")
    if spec.account_url:
        config["endpoint"] = spec.account_url.rstrip("/")
    elif not target.secrets:
        raise Invalid("an azure destination needs account_url or a connection naming the account")
    store = AzureStore(spec.container, config=config, client_options=client_options(target, spec.account_url),
                       retry_config=retry_config(target))
    return ObjectStoreDestination(target, store, f"az://{spec.container}",
                                  {"Content-Type": target.request.format.content_type})
