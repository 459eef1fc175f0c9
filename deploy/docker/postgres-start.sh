#!/bin/sh
# Entry point of the ferrofn/postgres image (deploy/docker/postgres.Dockerfile). On an empty data
# directory (a fresh volume) it creates the cluster: superuser $POSTGRES_USER with password
# $POSTGRES_PASSWORD (SCRAM), database $POSTGRES_DB, password authentication from any address
# (the compose network is private and no port is published), trust on the local socket only.
# Then it runs postgres in the foreground as PID 1. Only dash builtins besides the Postgres binaries.
# The password is read only when the data directory is created: changing it later needs ALTER ROLE.
set -eu
PGDATA="${PGDATA:-/var/lib/postgresql/data}"
POSTGRES_USER="${POSTGRES_USER:-ferrofn}"
POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
case "$POSTGRES_USER$POSTGRES_DB" in
  *[!a-z0-9_]*) echo "postgres-start: POSTGRES_USER and POSTGRES_DB must be [a-z0-9_]" >&2; exit 2 ;;
esac

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "postgres-start: the data directory is empty and POSTGRES_PASSWORD is not set" >&2
    exit 2
  fi
  umask 077
  pwfile=/tmp/postgres-start.pw
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" --encoding=UTF8 \
    --no-locale --auth-local=trust --auth-host=scram-sha-256 --no-instructions
  : >"$pwfile"
  printf '# postgres-start: password (SCRAM) from any address of the private network\nhost all all all scram-sha-256\n' \
    >>"$PGDATA/pg_hba.conf"
  if [ "$POSTGRES_DB" != postgres ]; then
    echo "CREATE DATABASE $POSTGRES_DB OWNER $POSTGRES_USER" |
      postgres --single -D "$PGDATA" -c jit=off -c log_min_messages=warning postgres >/dev/null
  fi
  echo "postgres-start: initialised $PGDATA (user $POSTGRES_USER, database $POSTGRES_DB)"
fi

exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp -c jit=off "$@"
