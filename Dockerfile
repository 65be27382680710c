# Turnout's image: one image for both processes.
#   docker build -t turnout .
#   docker run --rm -p 8080:8080 turnout                                   # the proxy, default config
#   docker run --rm turnout controller --config /var/lib/turnout/controller.yaml
# /var/lib/turnout is a volume: the configs, their tokens and state files (admin changes, the
# controller's rollouts, a managed proxy's cached snapshot) live there and survive the container.
# BASE_IMAGE: any image with Python >= 3.11 and its venv module (CI builds on a Debian rootfs
# imported offline). A wheels/ folder in the build context, if there is one, is installed from with
# no index at all (an offline build: `pip wheel --wheel-dir wheels .` first).
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}
COPY . /src
RUN python3 -m venv /opt/turnout \
    && if [ -d /src/wheels ]; then \
         /opt/turnout/bin/pip install --no-cache-dir --disable-pip-version-check --no-index --find-links /src/wheels turnout; \
       else /opt/turnout/bin/pip install --no-cache-dir --disable-pip-version-check /src; fi \
    && mkdir -p /var/lib/turnout && cp /src/config/container.yaml /var/lib/turnout/turnout.yaml \
    && cp /src/config/container-controller.yaml /var/lib/turnout/controller.yaml \
    && rm -rf /src \
    && useradd --system --home-dir /var/lib/turnout --shell /usr/sbin/nologin turnout \
    && chown -R turnout /var/lib/turnout
ENV PATH=/opt/turnout/bin:$PATH \
    TURNOUT_HEALTH_URL=http://127.0.0.1:9901/ready
WORKDIR /var/lib/turnout
VOLUME /var/lib/turnout
USER turnout
EXPOSE 8080 9901 9911
STOPSIGNAL SIGTERM
# /ready (proxy) or /live (controller: set TURNOUT_HEALTH_URL=http://127.0.0.1:9911/live) need no token.
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['TURNOUT_HEALTH_URL'], timeout=2)"]
ENTRYPOINT ["turnout"]
CMD ["proxy", "--config", "/var/lib/turnout/turnout.yaml"]
