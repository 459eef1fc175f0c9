#!/usr/bin/env bash
# Builds the two extra images of the HA cluster (deploy/docker-compose.ha.yml) FROM scratch, out of
# the Debian packages installed on this host: no registry, no base image.
#   ferrofn/postgres  Debian's Postgres server (postgresql-15 on Debian 12) (postgres, initdb, pg_isready), the shared
#                     libraries they link (ldd), its lib/ and share/ dirs, the timezone data, dash as
#                     /bin/sh (initdb runs postgres through the shell) and the start script
#                     deploy/docker/postgres-start.sh. User postgres, uid 70.
#   ferrofn/nginx     Debian's nginx, its libraries and mime.types, a main nginx.conf for a read-only
#                     container (temp files and pid under /tmp) and conf.d/ferrofn.conf generated from
#                     deploy/nginx/ferrofn.conf (listen 8080; upstream lb-1:8080 and lb-2:8080). User
#                     nginx, uid 101.
#   FERROFN_IMAGE_TAG=T   tag them T (default latest; the tests use a tag per checkout)
# Needs the packages postgresql and nginx (or nginx-light); .ci/run installs both.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command -v docker >/dev/null || die "docker is not installed"
command -v ldd >/dev/null || die "ldd is missing (Debian package libc-bin)"

# Debian's server package of the release: 15 on Debian 12 (the newest installed one is used).
PG_VERSION="$(ls /usr/lib/postgresql 2>/dev/null | grep -E '^[0-9]+$' | sort -n | tail -n1 || true)"
[[ -n "$PG_VERSION" ]] || die "no Postgres server is installed: apt-get install postgresql"
PG_BIN=/usr/lib/postgresql/$PG_VERSION/bin
PG_LIB=/usr/lib/postgresql/$PG_VERSION/lib
PG_SHARE=/usr/share/postgresql/$PG_VERSION
NGINX_BIN=/usr/sbin/nginx
[[ -x $PG_BIN/postgres && -x $PG_BIN/initdb && -x $PG_BIN/pg_isready && -d $PG_SHARE ]] ||
  die "Postgres $PG_VERSION server binaries are incomplete: apt-get install postgresql"
[[ -x $NGINX_BIN && -f /etc/nginx/mime.types ]] ||
  die "nginx is missing: apt-get install nginx-light (or nginx)"
[[ -x /bin/dash ]] || die "/bin/dash is missing (Debian package dash)"

# Copies files into the rootfs at the same paths (symlinks followed), and every shared library they
# load (ldd, recursively resolved by ldd itself), the dynamic loader included.
copy_with_libs() { # <rootfs> <file>...
  local root="$1" f lib
  shift
  for f in "$@"; do
    cp -L --parents "$f" "$root/"
    # "libx.so => /lib/.../libx.so (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)"
    while read -r lib; do
      [[ -e "$root$lib" ]] || cp -L --parents "$lib" "$root/"
    done < <(ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
  done
}

# A directory tree, at the same path. (From /: cp 9.1's --parents with -a and an absolute source fails
# on the parent dirs' attributes when run elsewhere.)
copy_tree() { # <rootfs> <dir>
  (cd / && cp -a --parents "${2#/}" "$1/")
}

build() { # <ctx> <tag> [docker build args...]
  local out ctx="$1" tag="$2"
  shift 2
  if ! out="$(docker build --quiet --label ferrofn.built-by=ferrofn-deploy "$@" -t "$tag" "$ctx" 2>&1)"; then
    printf '%s\n' "$out" >&2
    die "docker build of $tag failed"
  fi
  say "built $tag ($(docker image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1/1e6}'))"
}

TAG="${FERROFN_IMAGE_TAG:-latest}"
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT

# ---- postgres
pg="$ctx/postgres"
mkdir -p "$pg/rootfs/etc" "$pg/rootfs/tmp" "$pg/rootfs/bin" "$pg/data"
chmod 1777 "$pg/rootfs/tmp"
copy_with_libs "$pg/rootfs" "$PG_BIN/postgres" "$PG_BIN/initdb" "$PG_BIN/pg_isready" /bin/dash
ln -s dash "$pg/rootfs/bin/sh"
# Extensions and encoding conversions postgres loads at run time (initdb loads plpgsql and
# dict_snowball). Not the JIT provider (llvmjit.so and its bitcode: LLVM alone is ~100 MB; jit=off).
for so in "$PG_LIB"/*.so; do
  case "$(basename "$so")" in llvmjit*) continue ;; esac
  copy_with_libs "$pg/rootfs" "$so"
done
copy_tree "$pg/rootfs" "$PG_SHARE"
# Debian's postgres uses the system's timezone data (built --with-system-tzdata).
copy_tree "$pg/rootfs" /usr/share/zoneinfo
printf 'root:x:0:0:root:/:/sbin/nologin\npostgres:x:70:70:PostgreSQL:/var/lib/postgresql:/sbin/nologin\n' >"$pg/rootfs/etc/passwd"
printf 'root:x:0:\npostgres:x:70:\n' >"$pg/rootfs/etc/group"
mkdir -p "$pg/rootfs/usr/local/bin"
install -m 0755 "$DEPLOY_DIR/docker/postgres-start.sh" "$pg/rootfs/usr/local/bin/postgres-start"
cp "$DEPLOY_DIR/docker/postgres.Dockerfile" "$pg/Dockerfile"
build "$pg" "ferrofn/postgres:$TAG" --build-arg "PG_VERSION=$PG_VERSION"

# ---- nginx
ng="$ctx/nginx"
mkdir -p "$ng/rootfs/etc/nginx/conf.d" "$ng/rootfs/tmp"
chmod 1777 "$ng/rootfs/tmp"
copy_with_libs "$ng/rootfs" "$NGINX_BIN"
cp /etc/nginx/mime.types "$ng/rootfs/etc/nginx/"
printf 'root:x:0:0:root:/:/sbin/nologin\nnginx:x:101:101:nginx:/nonexistent:/sbin/nologin\n' >"$ng/rootfs/etc/passwd"
printf 'root:x:0:\nnginx:x:101:\n' >"$ng/rootfs/etc/group"
cat >"$ng/rootfs/etc/nginx/nginx.conf" <<'EOF'
# Main configuration of the ferrofn/nginx image (deploy/images-ha.sh): a non-root master on a
# read-only root, so the pid and every temp path are on the /tmp tmpfs. The site is conf.d/ferrofn.conf.
worker_processes auto;
pid /tmp/nginx.pid;
error_log stderr warn;
events { worker_connections 1024; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    # One line per request on stdout (docker logs), with the LB that served it.
    log_format ferrofn '$remote_addr [$time_local] "$request" $status $body_bytes_sent '
                       'upstream=$upstream_addr upstream_status=$upstream_status rt=$request_time';
    access_log /dev/stdout ferrofn;
    client_body_temp_path /tmp/nginx-body;
    proxy_temp_path /tmp/nginx-proxy;
    fastcgi_temp_path /tmp/nginx-fastcgi;
    uwsgi_temp_path /tmp/nginx-uwsgi;
    scgi_temp_path /tmp/nginx-scgi;
    include /etc/nginx/conf.d/*.conf;
}
EOF
# The site: deploy/nginx/ferrofn.conf itself (one source of truth), with its listen line and its one
# upstream server line replaced; each must occur exactly once.
site="$DEPLOY_DIR/nginx/ferrofn.conf"
for line in 'listen 80;' 'server 127.0.0.1:8080;'; do
  n="$(grep -cF -- "$line" "$site" || true)"
  [[ "$n" == 1 ]] || die "$site must contain '$line' exactly once (images-ha.sh rewrites it), found $n"
done
sed -e 's/^\( *\)listen 80;/\1listen 8080;/' \
  -e 's/^\( *\)server 127\.0\.0\.1:8080;/\1server lb-1:8080;\n\1server lb-2:8080;/' \
  "$site" >"$ng/rootfs/etc/nginx/conf.d/ferrofn.conf"
grep -q 'server lb-2:8080;' "$ng/rootfs/etc/nginx/conf.d/ferrofn.conf" || die "rewriting $site failed"
cp "$DEPLOY_DIR/docker/nginx.Dockerfile" "$ng/Dockerfile"
build "$ng" "ferrofn/nginx:$TAG"

docker image prune --force --filter label=ferrofn.built-by=ferrofn-deploy >/dev/null 2>&1 || true
