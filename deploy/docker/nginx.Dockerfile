# ferrofn/nginx: Debian's nginx on an empty base, in front of the two LBs of the HA compose cluster
# (deploy/docker-compose.ha.yml). Built by deploy/images-ha.sh out of the host's Debian package: the
# binary, its shared libraries, mime.types, a main nginx.conf and the site deploy/nginx/ferrofn.conf
# with its upstream servers set to lb-1:8080 and lb-2:8080. Never from a registry.
FROM scratch
COPY rootfs/ /
# Not root: listens on 8080; pid and temp files on the /tmp tmpfs (read-only root in compose).
USER 101:101
EXPOSE 8080
# nginx's graceful stop is SIGQUIT (finish requests in flight); SIGTERM is its fast stop.
STOPSIGNAL SIGQUIT
ENTRYPOINT ["/usr/sbin/nginx", "-g", "daemon off;"]
