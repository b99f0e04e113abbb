#!/bin/sh
# The pre-deploy one-shot: runs once, with the new image, before traffic moves.
echo "migrate: applying schema for $VERSION"
sleep 1
echo "migrate: done"
