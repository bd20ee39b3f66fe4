#!/usr/bin/env bash
# Set up auditrun from a fresh clone: system libraries for the PDF report (and the optional
# browser test), then a virtual environment in .venv with the package and its test extras.
set -euo pipefail
cd "$(dirname "$0")"

# WeasyPrint needs Pango; fonts keep the PDF free of missing-glyph boxes; poppler gives pdfinfo/pdftotext
# for the report tests; chromium runs the HTML report's browser test (skipped where absent).
APT_PACKAGES="libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core poppler-utils chromium"
if command -v apt-get >/dev/null 2>&1; then
  missing=$(for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
  if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "setup: installing Debian packages: $missing" >&2
    $SUDO apt-get update -qq
    # chromium is optional: the browser test skips without it
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(echo "$missing" | grep -v chromium) >/dev/null
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
      || echo "setup: chromium not installed; the browser test will be skipped" >&2
  fi
else
  echo "setup: no apt-get; install Pango, DejaVu fonts and poppler-utils with your package manager" >&2
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test,dask,mlflow]"
echo "setup: done; run .venv/bin/auditrun --help" >&2
