# Sourced by scripts/*: Debian packages the test suite needs beyond Python.
#   fuse3: fusermount3 and libfuse3, for the power-loss tests' FUSE filesystem
#          (tests/reliability/lazyfs.py, through the PyPI binding mfusepy).
# As root, a missing package is installed (apt-get update once, then install);
# otherwise this only says what is missing (those tests then skip, or fail
# under CI). A no-op when everything is there.

SYSTEM_DEPS=(fuse3)

ensure_system_deps() {
    if ! command -v dpkg-query >/dev/null 2>&1; then
        echo "system deps: no dpkg-query (not Debian); make sure ${SYSTEM_DEPS[*]} is installed" >&2
        return 0
    fi
    local missing=() pkg
    for pkg in "${SYSTEM_DEPS[@]}"; do
        if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]; then
            missing+=("$pkg")
        fi
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "system deps: missing ${missing[*]}; not root, so not installing (the power-loss tests will skip)" >&2
        return 0
    fi
    echo "system deps: installing ${missing[*]} (apt-get update, apt-get install)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}
