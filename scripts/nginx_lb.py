"""nginx (Debian's package) as a least-connections load balancer on loopback, for the benchmark and
the multi-node test: `start_nginx(port, [node ports], folder)` runs it in the foreground with its
own configuration, pid file and temp folders in `folder`, and returns the process.

The configuration is the one docs/deploy.md shows, less TLS: least_conn over the nodes, keep-alive
connections to them, X-Forwarded-For for the nodes' PBXBOT_TRUSTED_PROXIES, and the widget's
event stream unbuffered.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

CONFIG = """
worker_processes 1;
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    upstream pbxbot {{
        least_conn;
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 1m;
        location / {{
            proxy_pass http://pbxbot;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_next_upstream error timeout http_502 http_503;
            proxy_connect_timeout 2s;
        }}
        location = /api/chat/events {{
            proxy_pass http://pbxbot;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;
            proxy_read_timeout 1h;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def start_nginx(port: int, node_ports: list[int], folder: Path, *, timeout: float = 10.0) -> subprocess.Popen:
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx)")
    folder.mkdir(parents=True, exist_ok=True)
    servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=3s;" for p in node_ports)
    conf = folder / "nginx.conf"
    conf.write_text(CONFIG.format(folder=folder, port=port, servers=servers))
    proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(folder), "-e", str(folder / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=open(folder / "stderr.txt", "wb"))
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited: {(folder / 'stderr.txt').read_text(errors='replace')[-500:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("nginx did not start listening") from None
            time.sleep(0.1)
