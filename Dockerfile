# The runner builds this on every job, so it only copies a prebuilt static binary:
# no compiler, no package manager, no shell. Release commits carry the binary in dist/.
FROM scratch
COPY dist/berth-x86_64-linux /berth
ENTRYPOINT ["/berth"]
