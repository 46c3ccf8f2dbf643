# One image for every hub process: docker-compose.yml runs `hub serve NAME`
# (sandbox, courrier, gateway) and `hub topics` from it.

# Build stage: the project and all its dependencies as wheels, so that the
# runtime image holds neither the sources nor pip's build environment.
FROM python:3.11-slim AS build
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Installed from the build stage's wheels only (bind-mounted: they leave no layer).
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --disable-pip-version-check --no-index --find-links=/wheels \
        wallonia-interop-hub

# A non-root user that owns only the var directory (SQLite files when no
# DATABASE_URL, development keys); docker-compose mounts a shared volume there.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/hub --shell /usr/sbin/nologin hub \
    && mkdir -p /var/lib/hub /srv/corpus \
    && chown hub:hub /var/lib/hub

# The tenant files are part of the image; mount another directory over it to
# serve other tenants.
COPY config/tenants /etc/hub/tenants

# Settings (kernel/settings.py) whose defaults point into a source checkout:
# in the image the package lives in site-packages, so they are set here.
# HUB_HOST: listen on every interface of the container, not only its loopback.
ENV HUB_HOST=0.0.0.0 \
    HUB_VAR_DIR=/var/lib/hub \
    HUB_TENANTS_DIR=/etc/hub/tenants \
    HUB_CORPUS_DIR=/srv/corpus

USER hub
WORKDIR /var/lib/hub
EXPOSE 8000 8001 8002 8003 8004 8010
CMD ["hub", "--help"]
