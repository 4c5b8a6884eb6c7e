# Wharf as a container image, like registry:2's. The build context holds
# only the binary (nothing is fetched while building):
#
#   CGO_ENABLED=0 go build -o dist/wharf ./cmd/wharf
#   docker build -t wharf -f Dockerfile dist
#   docker run -d -p 5000:5000 --restart=always -v /data/wharf:/var/lib/wharf wharf
#
# Configuration: flags after the image name (they replace CMD: start with
# "serve"), WHARF_* variables, or registry:2's REGISTRY_* variables.
FROM scratch
COPY wharf /usr/bin/wharf
# The data directory's default, as a registry:2 variable so that every
# other way of setting it (--data, WHARF_DATA, -e REGISTRY_...) wins.
ENV REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=/var/lib/wharf
VOLUME /var/lib/wharf
# registry:2's volume path: mounted (`-v DIR:/var/lib/registry`, the
# registry:2 guides' habit), it is the data directory instead.
ENV WHARF_REGISTRY2_VOLUME=/var/lib/registry
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 CMD ["/usr/bin/wharf", "health"]
ENTRYPOINT ["/usr/bin/wharf"]
CMD ["serve"]
