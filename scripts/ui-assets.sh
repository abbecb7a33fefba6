#!/usr/bin/env bash
# The console's third-party assets (ui/vendor): asciinema-player, pinned,
# from npm. Checks the vendored copies are exactly what npm ships, and
# their recorded SHA-256 sums; `--update` copies npm's files over them.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=3.18.0
DEST=ui/vendor
NPM_DIR=target/npm-ui

if [ ! -f "$NPM_DIR/node_modules/asciinema-player/package.json" ] ||
  ! grep -q "\"version\": \"$VERSION\"" "$NPM_DIR/node_modules/asciinema-player/package.json"; then
  mkdir -p "$NPM_DIR"
  (cd "$NPM_DIR" && npm install --no-audit --no-fund --silent "asciinema-player@$VERSION")
fi
SRC="$NPM_DIR/node_modules/asciinema-player/dist/bundle"
for f in asciinema-player.min.js asciinema-player.css; do
  if [ "${1:-}" = "--update" ]; then
    cp "$SRC/$f" "$DEST/$f"
  elif ! cmp -s "$SRC/$f" "$DEST/$f"; then
    echo "ui-assets: $DEST/$f is not asciinema-player@$VERSION's $f; run scripts/ui-assets.sh --update" >&2
    exit 1
  fi
done
(cd "$DEST" && sha256sum --quiet -c SHA256SUMS)
echo "ui-assets: asciinema-player@$VERSION matches $DEST"
