// Validate custom resources (KEDA, prometheus-operator) with the @kubernetes-models
// validators, which are generated from the projects' CRD schemas.
// Usage: node validate-crds.mjs NODE_MODULES_DIR < resources.json (a JSON array)
// Prints one line per resource; exits 1 when one is invalid or of a kind it does not know.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const MODELS = {
  "keda.sh/v1alpha1/ScaledObject": "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject.js",
  "keda.sh/v1alpha1/TriggerAuthentication":
    "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication.js",
  "monitoring.coreos.com/v1/ServiceMonitor":
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor.js",
  "monitoring.coreos.com/v1/PrometheusRule":
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule.js",
};

const nodeModules = process.argv[2];
const resources = JSON.parse(readFileSync(0, "utf8"));
let failed = false;
for (const resource of resources) {
  const key = `${resource.apiVersion}/${resource.kind}`;
  const name = `${key} ${resource.metadata?.name}`;
  const file = MODELS[key];
  if (!file) {
    console.log(`UNKNOWN ${name}`);
    failed = true;
    continue;
  }
  const module = await import(pathToFileURL(join(nodeModules, file)).href);
  const Model = module[resource.kind];
  try {
    new Model(resource).validate();
    console.log(`OK ${name}`);
  } catch (error) {
    console.log(`INVALID ${name}: ${error.message}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
