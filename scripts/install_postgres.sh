#!/usr/bin/env bash
# Installs the PostgreSQL server the tests start on loopback (threegen_dagster_tests/pg_server.py):
# Debian's `postgresql` package. Idempotent: does nothing when a server is already installed.
# It only installs: the tests run their own server in a temporary folder and stop it, and this script
# keeps the package from starting Debian's default cluster, so no server is left running.
set -euo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
    exit 0  # installed (by this script, the image or by hand)
fi
if [ "$(id -u)" != 0 ]; then
    echo "install_postgres.sh: PostgreSQL is not installed and this is not root; run as root," \
         "or install Debian's postgresql package (apt-get install postgresql) yourself" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null; then
    echo "install_postgres.sh: no apt-get here: install a PostgreSQL server (initdb, pg_ctl, postgres) yourself" >&2
    exit 1
fi

# No service starts during the install (the Debian convention for images: policy-rc.d exit 101),
# and no default cluster is created; both are left as they were afterwards.
policy=/usr/sbin/policy-rc.d
added_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && added_policy=1
fi
trap '[ -n "$added_policy" ] && rm -f "$policy"' EXIT
mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/threegen-no-main.conf

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql >/dev/null
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || { echo "install_postgres.sh: postgresql installed, but no server binary found" >&2; exit 1; }
echo "install_postgres.sh: installed $(ls -d /usr/lib/postgresql/*/bin/postgres | tail -1)"
