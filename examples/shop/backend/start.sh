#!/bin/sh
# A release built with MODE=crash dies at start, as an app without its database does.
if [ "$MODE" = crash ]; then echo "fatal: cannot connect to database" >&2; exit 3; fi
exec httpd -f -p 8080 -h /www
