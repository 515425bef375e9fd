# webtorrent-bridge in a container: one BitTorrent peer in both swarms (classic TCP/uTP clients and
# WebTorrent browsers), its HTTP API / web page / streams, and the embedded tracker.
#
#   docker build -t webtorrent-bridge .
#   docker run -d --name bridge -e BRIDGE_API_TOKEN=$(openssl rand -hex 32) \
#       -p 6881:6881/tcp -p 6881:6881/udp -p 8080:8080 -p 8000:8000/tcp -p 8000:8000/udp \
#       -v bridge-data:/data -v bridge-state:/state webtorrent-bridge
#
# BRIDGE_API_TOKEN is REQUIRED with the default command: `serve` refuses to bind its HTTP API to a
# non-loopback address (here 0.0.0.0, so that it is reachable from outside the container) without a
# token. Keep it secret; put TLS in front of port 8080 (see docker-compose.yml and deploy/Caddyfile).
#
# Ports: 6881/tcp + 6881/udp  peer port (TCP and uTP): publish directly, never through an HTTP proxy
#        8080/tcp             HTTP API, web page and file streams (/api/v1/health for health checks)
#        8000/tcp + 8000/udp  embedded tracker (`--tracker`): WebSocket + HTTP announce on TCP, BEP 15 on UDP
# Volumes: /data (downloaded and seeded files), /state (resume data, torrents, settings).
#
# tests/test_dockerfile.py checks this file without Docker: it runs the `web` stage's and the `build`
# stage's RUN steps on the host against the build context (.dockerignore applied). Keep the RUN steps
# plain POSIX sh, and paths of the build stage in VIRTUAL_ENV / WORKDIR.

# ---------------------------------------------------------------------------------------------------
# 1. WebTorrent's browser bundle (web/node_modules/webtorrent/dist), from the lock file.
#    --ignore-scripts: a transitive preinstall script fails and a native (node-datachannel) download
#    is blocked; the browser bundle needs neither.
FROM node:20-bookworm-slim AS web
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund \
    && test -f node_modules/webtorrent/dist/webtorrent.min.js \
    && test -f node_modules/webtorrent/dist/sw.min.js

# ---------------------------------------------------------------------------------------------------
# 2. The Python package and its dependencies, in a virtualenv that the final stage copies as is (same
#    base image, same path: its scripts' shebangs stay valid). No compiler is needed on amd64: every
#    dependency (aiortc, av, cryptography, uvloop, orjson, ...) comes as a manylinux wheel.
FROM python:3.11-slim-bookworm AS build
ENV VIRTUAL_ENV=/opt/venv \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridge ./bridge
RUN python -m venv "$VIRTUAL_ENV" \
    && "$VIRTUAL_ENV/bin/pip" install . \
    && "$VIRTUAL_ENV/bin/webtorrent-bridge" --version

# ---------------------------------------------------------------------------------------------------
# 3. Runtime: the virtualenv, the web page and the bundle; a non-root user; no build tools, no ffmpeg.
FROM python:3.11-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="webtorrent-bridge" \
      org.opencontainers.image.description="One BitTorrent peer in both swarms: classic clients and WebTorrent browsers" \
      org.opencontainers.image.licenses="MIT"

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BRIDGE_WEB_ROOT=/app/web

RUN groupadd --system --gid 10001 bridge \
    && useradd --system --uid 10001 --gid bridge --home-dir /state --no-create-home \
       --shell /usr/sbin/nologin bridge \
    && mkdir -p /data /state \
    && chown bridge:bridge /data /state

COPY --from=build /opt/venv /opt/venv
# The pages (the demo player index.html, serve's ui.html, their js/css) and WebTorrent's bundle only:
# not package.json, not the rest of node_modules. The server serves web/'s top-level files by suffix.
COPY web/*.html web/*.js web/*.css /app/web/
COPY --from=web /src/web/node_modules/webtorrent/dist /app/web/node_modules/webtorrent/dist

USER 10001:10001
WORKDIR /state
VOLUME ["/data", "/state"]
EXPOSE 6881/tcp 6881/udp 8080/tcp 8000/tcp 8000/udp

# No curl in slim images: Python's urllib (exits non-zero on an error status or no answer).
# /api/v1/health needs no token. Assumes --http-port 8080, as in CMD.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/api/v1/health', timeout=4).read()"]

ENTRYPOINT ["webtorrent-bridge"]
CMD ["serve", "--host", "0.0.0.0", "--http-port", "8080", "--port", "6881", "--data-dir", "/data", "--state-dir", "/state", "--tracker"]
