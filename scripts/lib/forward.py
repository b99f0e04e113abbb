#!/usr/bin/env python3
"""A TCP forwarder for the demo's swarm: listen on HOST:PORT, connect each client to
TO_HOST:TO_PORT. Run inside the swarm engine's network namespace, it lets that engine pull
from the registry on the machine's loopback, by the address berth pushed to."""
import socket
import sys
import threading


def pipe(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def main():
    host, port, to_host, to_port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    server = socket.create_server((host, port), reuse_port=True)
    while True:
        client, _ = server.accept()
        try:
            upstream = socket.create_connection((to_host, to_port), timeout=10)
            upstream.settimeout(None)
        except OSError:
            client.close()
            continue
        threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()


if __name__ == "__main__":
    main()
