# ferrofn LB image: the static `ferrofn-lb` binary on an empty base. Built by deploy/images.sh from a
# small context it prepares (the stripped binary and empty dirs), never from the workspace itself.
FROM scratch
COPY rootfs/ /
# Empty named volumes mounted on these take their owner from the image: the LB (uid 65532) can then
# write its SQLite file into /data and the `certs` service its PEM files into /certs.
COPY --chown=65532:65532 empty/ /data/
COPY --chown=65532:65532 empty/ /certs/
USER 65532:65532
WORKDIR /data
EXPOSE 8080
ENTRYPOINT ["/ferrofn-lb"]
