# The runner builds this on every job, so it only copies a prebuilt static binary: no
# compiler, no package manager, no shell. Release commits carry the binaries in dist/.
#
# BuildKit sets TARGETARCH (amd64, arm64) from the runner's platform. The legacy builder
# leaves it empty, so it falls back to amd64. (A default on the ARG itself would override
# BuildKit's value, so the fallback lives in the COPY.)
FROM scratch
ARG TARGETARCH
COPY dist/berth-${TARGETARCH:-amd64}-linux /berth
ENTRYPOINT ["/berth"]
