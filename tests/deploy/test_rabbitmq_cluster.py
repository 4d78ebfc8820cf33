"""deploy/k8s/rabbitmq: the RabbitmqCluster passes the cluster operator's CRD schema, strictly,
and gives the worker what it needs (three nodes, the consistent-hash plugin)."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pytest

from tests.deploy.support import ROOT
from tests.deploy.test_kubernetes import one

#: The plugin the worker's consistent-hash exchange (x-consistent-hash) needs.
PLUGIN = "rabbitmq_consistent_hash_exchange"
#: The CRD's openAPIV3Schema (provenance in its "$comment").
CRD = ROOT / "tests" / "deploy" / "crds" / "rabbitmqcluster-v1beta1.json"


def strict(schema: Any) -> Any:
    """Return the schema with unknown fields refused wherever it lists the known ones, as the
    API server's structural pruning would drop them (a misspelt field must fail here)."""
    if isinstance(schema, dict):
        out = {key: strict(value) for key, value in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


def validator() -> jsonschema.Draft7Validator:
    schema = strict(json.loads(CRD.read_text())["schema"])
    return jsonschema.Draft7Validator(schema)


def cluster() -> dict[str, Any]:
    return one("rabbitmq", "RabbitmqCluster", "lovense-rabbitmq")


def test_rabbitmqcluster_passes_the_operator_crd_schema() -> None:
    """The rendered RabbitmqCluster validates against rabbitmq.com/v1beta1's schema."""
    resource = cluster()
    assert resource["apiVersion"] == "rabbitmq.com/v1beta1"
    errors = [e.message for e in validator().iter_errors(resource)]
    assert errors == []


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda r: r["spec"].update(replica=3), "'replica' was unexpected"),
    (lambda r: r["spec"]["rabbitmq"]["additionalPlugins"].append("consistent-hash"),
     "does not match"),
    (lambda r: r["spec"].update(replicas="three"), "is not of type 'integer'"),
])
def test_the_crd_schema_is_really_applied(mutate: Any, message: str) -> None:
    """A misspelt field, a plugin name the operator refuses and a wrong type each fail."""
    resource = copy.deepcopy(cluster())
    mutate(resource)
    errors = [e.message for e in validator().iter_errors(resource)]
    assert any(message in error for error in errors), errors


def test_three_nodes_with_the_consistent_hash_plugin() -> None:
    """Three nodes (an odd number: one quorum survives a partition) and the plugin the
    worker's exchange needs."""
    spec = cluster()["spec"]
    assert spec["replicas"] == 3
    assert PLUGIN in spec["rabbitmq"]["additionalPlugins"]
