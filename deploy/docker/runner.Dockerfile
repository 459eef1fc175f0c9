# ferrofn runner image: the static `ferrofn-runner` binary on an empty base. Built by deploy/images.sh.
# It drives the host's Docker engine through the mounted socket: run it with the socket's group added
# (compose: group_add) rather than as root; see deploy/README.md.
FROM scratch
COPY rootfs/ /
USER 65532:65532
EXPOSE 9190 8080
ENTRYPOINT ["/ferrofn-runner"]
