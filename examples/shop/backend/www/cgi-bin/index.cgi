#!/bin/sh
# busybox httpd runs /cgi-bin/index.cgi for a directory without index.html, so this is
# the router for /api/health/ (httpd redirects /api/health there first).
case "$REQUEST_URI" in
  /api/health*)
    if [ "$MODE" = 500 ]; then
      printf 'HTTP/1.0 500 Internal Server Error\r\nContent-Type: application/json\r\n\r\n'
      printf '{"success":false,"error":"database connection refused"}'
      echo "health: 500 database connection refused" >&2
    else
      printf 'Content-Type: application/json\r\n\r\n'
      printf '{"success":true,"data":{"status":"healthy","version":"%s","greeting":"%s","timestamp":"%s"}}' \
        "$VERSION" "$GREETING" "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    fi ;;
  *) printf 'HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnot found\n' ;;
esac
