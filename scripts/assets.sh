#!/usr/bin/env bash
# Installs the pinned front-end packages (package-lock.json) and copies the files the pages use
# into static/vendor/. Nothing is loaded from a CDN at run time.
set -euo pipefail
cd "$(dirname "$0")/.."

stamp="node_modules/.llmwise-assets"
want="$(sha256sum package-lock.json scripts/assets.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f static/vendor/htmx.min.js ]; then
  exit 0
fi
command -v npm >/dev/null || { echo "npm (Node.js) is needed to install front-end assets" >&2; exit 1; }
echo "==> installing front-end assets (pinned by package-lock.json)"
npm ci --no-audit --no-fund --loglevel=error
mkdir -p static/vendor
cp node_modules/htmx.org/dist/htmx.min.js static/vendor/htmx.min.js
cp node_modules/chart.js/dist/chart.umd.min.js static/vendor/chart.umd.min.js
cp node_modules/chart.js/dist/chart.umd.min.js.map static/vendor/chart.umd.min.js.map
cp node_modules/@picocss/pico/css/pico.min.css static/vendor/pico.min.css
echo "$want" > "$stamp"
