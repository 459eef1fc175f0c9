# ferrofn/postgres: Debian's Postgres server (15 on Debian 12) on an empty base, for the HA compose cluster
# (deploy/docker-compose.ha.yml). Built by deploy/images-ha.sh from a context it prepares out of the
# host's Debian packages (binaries, their shared libraries, share/ and lib/ dirs, timezone data,
# dash as /bin/sh); never from a registry.
# The data directory is initialised when the container first starts on an empty volume (initdb runs
# postgres through /bin/sh, hence dash): deploy/docker/postgres-start.sh.
FROM scratch
# The server's major version (the dir under /usr/lib/postgresql), set by images-ha.sh.
ARG PG_VERSION=15
COPY rootfs/ /
# An empty named volume mounted here takes its owner from the image: postgres (uid 70) owns it.
COPY --chown=70:70 data/ /var/lib/postgresql/data/
ENV PATH=/usr/lib/postgresql/${PG_VERSION}/bin:/usr/local/bin:/bin \
    PGDATA=/var/lib/postgresql/data \
    TZ=UTC
USER 70:70
# Fast shutdown: SIGTERM is postgres' "smart" shutdown, which waits for every client (the LBs keep
# pooled connections) to disconnect.
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/postgres-start"]
