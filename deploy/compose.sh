#!/usr/bin/env bash
# Runs docker compose (v2 plugin or v1 binary) on deploy/docker-compose.yml with the cluster's
# project name and variables (deploy/lib.sh), e.g. `bash deploy/compose.sh ps`, `... logs -f lb`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
compose "$@"
