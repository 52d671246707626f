#!/usr/bin/env bash
# An HTML template for `dvc plots show` and `dvc plots diff` that carries vega, vega-lite and
# vega-embed inside it, so the page draws without a network. DVC's own template loads them from
# a CDN, and offline its page stays blank. The versions are the ones dvc-render's template names;
# npm fetches them from its registry and checks them against the registry's hashes. Each file is
# the one the package names for browsers (its "jsdelivr" entry, what the CDN would serve).
#
#   scripts/plots_template.sh [OUT]      # default: build/plots/template.html
#
# `make setup` runs it and then points this checkout's DVC at OUT:
#   dvc config --local plots.html_template ../build/plots/template.html
set -euo pipefail

PACKAGES="vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2"
OUT=${1:-build/plots/template.html}

if ! command -v npm >/dev/null; then
  echo "plots_template.sh: npm not found; install it (Debian: apt-get install npm) and rerun make setup." >&2
  exit 1
fi
mkdir -p "$(dirname "$OUT")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# shellcheck disable=SC2086
npm pack --silent --pack-destination "$work" $PACKAGES >/dev/null
{
  printf '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n{refresh_tag}\n<title>edgetune plots</title>\n'
  for package in $PACKAGES; do   # in this order: vega-embed binds to the two before it
    tarball="$work/${package/@/-}.tgz"
    mkdir -p "$work/unpacked" && tar xzf "$tarball" -C "$work/unpacked"
    file=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["jsdelivr"])' "$work/unpacked/package/package.json")
    if grep -q '</script' "$work/unpacked/package/$file"; then
      echo "plots_template.sh: $(basename "$tarball")'s $file holds '</script' and cannot be inlined" >&2
      exit 1
    fi
    printf '<script>/* %s %s */\n' "$(basename "$tarball" .tgz)" "$file"
    cat "$work/unpacked/package/$file"
    printf '\n</script>\n'
    rm -rf "$work/unpacked"
  done
  printf '<style>table { border-spacing: 15px; }</style>\n</head>\n<body>\n{plot_divs}\n</body>\n</html>\n'
} > "$work/template.html"
mv "$work/template.html" "$OUT"
echo "plots template with $PACKAGES: $OUT"
