"""Which Azure ML workspace, and who we are: flags, then environment, then Azure ML's config.json.

The workspace IDs are used to build the MLClient and nothing else: they are never written into
rendered configs, job files, run records or logs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

from phi3e2e.errors import UserError

CONFIG_NAMES = ("config.json", ".azureml/config.json")  # where MLClient.from_config looks, too
ENV_VARS = {
    "subscription_id": "AZURE_SUBSCRIPTION_ID",
    "resource_group": "AZURE_RESOURCE_GROUP",
    "workspace_name": "AZUREML_WORKSPACE_NAME",
}
FLAGS = {"subscription_id": "--subscription", "resource_group": "--resource-group", "workspace_name": "--workspace"}
ARM_SCOPE = "https://management.azure.com/.default"
NO_CREDENTIALS = (
    "no Azure credentials: run `az login`, or set AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET "
    "(a service principal), or run where a managed identity is available"
)


@dataclass(frozen=True)
class WorkspaceRef:
    subscription_id: Optional[str] = None
    resource_group: Optional[str] = None
    workspace_name: Optional[str] = None


def find_config_file(*start_dirs: Path) -> Optional[Path]:
    """Azure ML's config.json (as downloaded from the portal), searched from each folder up."""
    for start in start_dirs:
        for folder in (start, *start.parents):
            for name in CONFIG_NAMES:
                if (folder / name).is_file():
                    return folder / name
    return None


def resolve_workspace(flags: WorkspaceRef, search_from: tuple[Path, ...] = ()) -> WorkspaceRef:
    """Fill each field from the flag, else its environment variable, else config.json; all three needed."""
    values = {f.name: getattr(flags, f.name) or os.environ.get(ENV_VARS[f.name]) for f in fields(WorkspaceRef)}
    config_file = None
    if not all(values.values()):
        config_file = find_config_file(*(search_from or (Path.cwd(),)))
        if config_file:
            try:
                recorded = json.loads(config_file.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise UserError(f"{config_file}: not a readable Azure ML config.json ({e})") from None
            # The portal's file says "resource_group"; older ones say "resourceGroup".
            recorded.setdefault("resource_group", recorded.get("resourceGroup"))
            for key in values:
                values[key] = values[key] or recorded.get(key)
    missing = [key for key, value in values.items() if not value]
    if missing:
        where = f"{config_file} lacks {', '.join(missing)}" if config_file else "no Azure ML config.json found"
        raise UserError(
            f"no Azure ML workspace: {where}; download config.json from the workspace's overview page in "
            f"Azure ML studio into this folder, or pass {' '.join(FLAGS[key] for key in missing)} "
            f"(or set {', '.join(ENV_VARS[key] for key in missing)})"
        )
    return WorkspaceRef(**values)


def default_credential():
    """DefaultAzureCredential: environment, managed identity, az login, ... (never a browser prompt)."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(exclude_interactive_browser_credential=True)


def check_credential(credential) -> None:
    """Fail now, in one line, rather than deep inside the first SDK call."""
    import logging

    from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

    # azure.identity logs a multi-line report of every credential it tried; our one line says it all.
    identity_log = logging.getLogger("azure.identity")
    level, identity_log.level = identity_log.level, logging.CRITICAL
    try:
        credential.get_token(ARM_SCOPE)
    except (ClientAuthenticationError, ServiceRequestError) as e:
        if network := network_failure(e):
            raise UserError(f"cannot reach Azure to sign in ({network}); check the network or proxy") from None
        raise UserError(NO_CREDENTIALS) from None
    finally:
        identity_log.setLevel(level)


def network_failure(error: BaseException) -> Optional[str]:
    """The network error behind a failed sign-in, if that is what it was (not missing credentials)."""
    from azure.core.exceptions import ServiceRequestError

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (ServiceRequestError, ConnectionError, TimeoutError)) or (
            isinstance(error, OSError) and error.errno is not None
        ):
            return " ".join(str(error).split())[:200] or type(error).__name__
        error = error.__cause__ or error.__context__
    return None


def connect(flags: WorkspaceRef, search_from: tuple[Path, ...] = (), credential=None):
    """An MLClient for the workspace, with the credential checked. Nothing is sent before this."""
    workspace = resolve_workspace(flags, search_from)
    credential = credential or default_credential()
    check_credential(credential)
    from azure.ai.ml import MLClient

    return MLClient(
        credential,
        subscription_id=workspace.subscription_id,
        resource_group_name=workspace.resource_group,
        workspace_name=workspace.workspace_name,
    )
