# mailsift service image.
#   docker build -t mailsift .
#   docker run -d -p 127.0.0.1:8470:8470 -v mailsift-data:/data \
#       -e MAILSIFT_ALLOW_PLAIN_HTTP=true mailsift

# --- build: install mailsift and its dependencies into a venv -------------------------
FROM python:3.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1

# The venv gets no pip or setuptools of its own: the image's pip installs into it, and
# the build backend lives in pip's temporary build environment. Every dependency ships
# wheels for CPython 3.11 on glibc (amd64 and arm64), so no compiler is needed here.
RUN python -m venv --without-pip /opt/mailsift

WORKDIR /src
COPY pyproject.toml README.md ./
COPY mailsift ./mailsift
RUN pip --python /opt/mailsift/bin/python install --no-cache-dir .

# --- runtime: the venv, a service account, nothing else --------------------------------
FROM python:3.11-slim-bookworm

# A system account for the service: fixed uid/gid 10001, no home, no login shell.
RUN groupadd --system --gid 10001 mailsift \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin mailsift \
    && mkdir /data \
    && chown 10001:10001 /data

COPY --from=build /opt/mailsift /opt/mailsift

ENV PATH=/opt/mailsift/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MAILSIFT_DATA_DIR=/data

# Training log and state (SQLite), the model snapshot cache. `mailsift train CORPUS` in the
# container appends to the log under /data (MAILSIFT_DATA_DIR) and publishes a rebuild.
VOLUME /data
WORKDIR /

USER 10001:10001
EXPOSE 8470

# Liveness on the gateway listener, over HTTPS when a certificate is configured (loopback:
# the certificate's name cannot match, so it is not verified). Python, since no curl here.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, ssl, urllib.request as u; tls = bool(os.environ.get('MAILSIFT_TLS_CERTFILE')); u.urlopen(('https' if tls else 'http') + '://127.0.0.1:8470/healthz', timeout=4, context=ssl._create_unverified_context() if tls else None)"]

ENTRYPOINT ["mailsift"]
# 0.0.0.0: inside a container, loopback is the container's own; binding beyond it is what
# the port mapping (docker run -p 8470:8470) needs to reach the service. mailsift refuses
# plain HTTP on such an address unless told: set MAILSIFT_TLS_CERTFILE and
# MAILSIFT_TLS_KEYFILE, or MAILSIFT_ALLOW_PLAIN_HTTP=true behind a TLS proxy. The admin
# listener stays on the container's loopback (127.0.0.1:8471): use `docker exec`.
CMD ["serve", "--host", "0.0.0.0", "--port", "8470"]
