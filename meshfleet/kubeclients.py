"""The `kubernetes` client for --kubeconfig PATH or --in-cluster, shared by the hub and agent commands."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes.config
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException


def api_message(exc: ApiException) -> str:
    """The API server's own message from a refusal (its Status body), else the HTTP status."""
    try:
        return str(json.loads(exc.body or "")["message"])
    except (TypeError, ValueError, KeyError):
        return f"HTTP {exc.status}: {exc.reason}"


class KubeConfigError(Exception):
    """The client cannot be configured; the message is the loader's."""


def kubernetes_client(kubeconfig: Path | None, in_cluster: bool) -> ApiClient:
    if bool(kubeconfig) == in_cluster:
        raise KubeConfigError("give exactly one of --kubeconfig and --in-cluster")
    try:
        if in_cluster:
            configuration = Configuration()
            kubernetes.config.load_incluster_config(client_configuration=configuration)
            return ApiClient(configuration)
        client: ApiClient = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        return client
    except (kubernetes.config.ConfigException, OSError) as exc:
        raise KubeConfigError(f"cannot configure the Kubernetes client: {exc}") from exc
