# Sourced by scripts/*: makes .venv/ at the repo root and keeps it in step
# with pyproject.toml. The venv is rebuilt when it is missing, when its
# Python is gone, or when pyproject.toml (or the extras asked for) changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

ensure_venv() {
    local extras="${1:-}"
    local spec="$ROOT"
    [ -n "$extras" ] && spec="$ROOT[$extras]"
    local want
    want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1) extras=$extras"
    local stamp="$VENV/.streams-stamp"
    if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    if ! [ -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
        rm -rf "$VENV"
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$spec"
    echo "$want" > "$stamp"
}
