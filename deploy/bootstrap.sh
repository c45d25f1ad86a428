#!/usr/bin/env bash
# Make this machine able to run ecotel: Debian's mosquitto and influxdb, then .venv with the
# project installed editable. Idempotent, and quick when nothing changed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.ecotel-installed"
DEB_PACKAGES=(mosquitto mosquitto-clients influxdb tcpdump)

say() { printf 'ecotel bootstrap: %s\n' "$*"; }
die() { printf 'ecotel bootstrap: error: %s\n' "$*" >&2; exit 1; }

have() {
    # Debian installs mosquitto in /usr/sbin, which non-root PATHs usually lack.
    command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" ]]
}

install_debian_packages() {
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e $policy ]]; then
        # Exit 101 tells the package scripts not to start system-wide daemons, which would
        # listen on 0.0.0.0 and hold the default ports.
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    say "installing Debian packages ${DEB_PACKAGES[*]} ..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${DEB_PACKAGES[@]}" >/dev/null
    if ((created_policy)); then
        rm -f "$policy"
        trap - EXIT
    fi
}

if ! have mosquitto || ! have mosquitto_pub || ! have influxd || ! have tcpdump; then
    if [[ $(id -u) -ne 0 ]]; then
        die "mosquitto, mosquitto_pub, influxd or tcpdump is missing; as root run:
    apt-get update && apt-get install -y --no-install-recommends ${DEB_PACKAGES[*]}
or run this script as root."
    fi
    command -v apt-get >/dev/null 2>&1 || die "no apt-get: install ${DEB_PACKAGES[*]} by hand"
    install_debian_packages
    have mosquitto && have mosquitto_pub && have influxd && have tcpdump \
        || die "packages installed but mosquitto, mosquitto_pub, influxd or tcpdump still missing"
fi

python_ok() {
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; ecotel needs Python >= 3.11"
python_ok "$PYTHON" \
    || die "$PYTHON is '$("$PYTHON" -V 2>&1 || true)'; ecotel needs Python >= 3.11 (set PYTHON=...)"

# A venv copied from another machine or built by an older python is not usable: rebuild it.
if [[ -d $VENV ]] && ! python_ok "$VENV/bin/python"; then
    say "discarding unusable $VENV ..."
    rm -rf "$VENV"
fi
if [[ ! -d $VENV ]]; then
    say "creating $VENV with $("$PYTHON" -V 2>&1) ..."
    "$PYTHON" -m venv "$VENV"
fi

want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
have_stamp="$(cat "$STAMP" 2>/dev/null || true)"
if [[ $want != "$have_stamp" ]]; then
    say "installing ecotel and dev tools into $VENV ..."
    rm -f "$STAMP"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]'
    printf '%s\n' "$want" >"$STAMP"
fi
say "ready"
