# Sourced by scripts/*: makes .venv/ at the repo root and keeps it in step
# with pyproject.toml. The venv is (re)built when it is missing, when its
# Python is broken, when pyproject.toml changed, or when it lacks the extras
# asked for (a venv with more extras than asked serves as it is: one made
# by `scripts/bench` with dev,bench serves `scripts/test` and `scripts/serve`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

# True when every comma-separated extra of $2 is in the comma-separated list $1.
_has_extras() {
    local extra
    for extra in ${2//,/ }; do
        [[ ",$1," == *",$extra,"* ]] || return 1
    done
}

ensure_venv() {
    local extras="${1:-}"
    local stamp="$VENV/.streams-stamp"
    local hash
    hash="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
    if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ]; then
        local have
        have="$(cat "$stamp")"
        if [ "${have%% *}" = "$hash" ] && _has_extras "${have#* }" "$extras"; then
            return 0
        fi
    fi
    if ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
        rm -rf "$VENV"
        python3 -m venv "$VENV"
    fi
    local spec="$ROOT"
    [ -n "$extras" ] && spec="$ROOT[$extras]"
    echo "setting up $VENV (pip install -e '$spec')" >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$spec"
    echo "$hash $extras" > "$stamp"
}
