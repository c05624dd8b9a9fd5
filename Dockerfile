# syntax=docker/dockerfile:1
# Three stages: the pinned esbuild binary from npm, the Python package in a venv,
# and a slim runtime without compilers (Node.js and npm only, for npm: sources).

# --- esbuild: `npm ci` of package-lock.json, nothing else from Node is kept ---
FROM node:20.19-bookworm-slim AS esbuild
WORKDIR /build
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund \
    && mkdir /out \
    && cp node_modules/@esbuild/linux-*/bin/esbuild /out/esbuild \
    && /out/esbuild --version

# --- the package, installed into a venv the runtime copies as is ---
# Its dependencies are exactly requirements.txt (pinned, hashes checked); the package
# itself goes on top with the lock's setuptools, so nothing is resolved at build time.
FROM python:3.11.11-slim-bookworm AS python
WORKDIR /src
COPY requirements.txt ./
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --require-hashes -r requirements.txt
COPY pyproject.toml README.md LICENSE ./
COPY bundler ./bundler
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-build-isolation .

# --- runtime ---
FROM python:3.11.11-slim-bookworm
# The embedded example components are the default source; point the service at an
# artifact server instead with --build-arg SOURCE=https://artifacts.example/pkg-{version}.tgz
# (or BUNDLER_SOURCE at run time). The shipped static_fallback/ is the examples' alone: with
# another source, pass --build-arg FALLBACK_DIR= (or -e BUNDLER_FALLBACK_DIR=), or your own.
ARG SOURCE=/srv/bundler/examples/components
ARG FALLBACK_DIR=/srv/bundler/static_fallback
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin bundler \
    && mkdir -p /var/lib/bundler \
    && chown bundler /var/lib/bundler
COPY --from=python /opt/venv /opt/venv
COPY --from=esbuild /out/esbuild /usr/local/bin/esbuild
# The npm client installs the versions of an npm: source (scripts never run).
COPY --from=esbuild /usr/local/bin/node /usr/local/bin/node
COPY --from=esbuild /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/npm
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
    && npm --version
COPY examples/components /srv/bundler/examples/components
COPY static_fallback /srv/bundler/static_fallback
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    TMPDIR=/var/lib/bundler \
    BUNDLER_HOST=0.0.0.0 \
    BUNDLER_PORT=8080 \
    BUNDLER_DATA_DIR=/var/lib/bundler \
    BUNDLER_SOURCE=${SOURCE} \
    BUNDLER_FALLBACK_DIR=${FALLBACK_DIR} \
    BUNDLER_ESBUILD=/usr/local/bin/esbuild \
    BUNDLER_LOG_FORMAT=json \
    HOME=/var/lib/bundler \
    NPM_CONFIG_UPDATE_NOTIFIER=false
# The data dir: source pulls, the disk cache, built fallbacks. Mount a volume here
# (an emptyDir on Kubernetes) so a container restart keeps the cache.
VOLUME ["/var/lib/bundler"]
USER 10001
EXPOSE 8080
ENTRYPOINT ["bundler"]
CMD ["serve"]
