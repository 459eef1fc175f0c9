#!/usr/bin/env bash
# `make test` runs this first: checks every tool the tests need and prints one line per missing one,
# with the command that installs it (Debian). Exits 1 if anything is missing.
set -uo pipefail

missing=0
need() { # <what> <how to install> <check command...>
  local what="$1" how="$2"
  shift 2
  if ! "$@" >/dev/null 2>&1; then
    printf 'missing: %-34s install: %s\n' "$what" "$how" >&2
    missing=1
  fi
}
has() { command -v "$1" || [[ -x "/usr/sbin/$1" ]]; }

need "cargo (Rust toolchain)" "rustup (https://rustup.rs), then: rustup toolchain install stable" has cargo
need "rustfmt" "rustup component add rustfmt" cargo fmt --version
need "clippy" "rustup component add clippy" cargo clippy --version
need "docker (CLI)" "apt-get install -y docker.io" has docker
need "a Docker engine this user may use" "start it (systemctl start docker) and add the user to group docker" docker info
need "Docker Compose (docker compose or docker-compose)" "apt-get install -y docker-compose" \
  bash -c 'docker compose version || docker-compose version'
need "nginx (for the ingress test)" "apt-get install -y nginx-light" has nginx
need "Postgres server binaries (initdb, for the registry tests)" "apt-get install -y postgresql" \
  bash -c 'has() { command -v "$1" || [[ -x "/usr/sbin/$1" ]]; }; has initdb || ls /usr/lib/postgresql/*/bin/initdb'
need "python3 with kubernetes-validate (the Kubernetes manifest test)" \
  "python3 -m pip install kubernetes-validate==1.37.0" python3 -c 'import kubernetes_validate, yaml'

if [[ "$missing" != 0 ]]; then
  echo "make test needs the tools above (.ci/run installs them on a CI machine)" >&2
  exit 1
fi
