# Turnout's image: one image for both processes.
#   docker build -t turnout .
#   docker run --rm -p 8080:8080 turnout                                   # the proxy, default config
#   docker run --rm turnout controller --config /var/lib/turnout/controller.yaml
# /var/lib/turnout is a volume: the configs, their tokens and state files (admin changes, the
# controller's rollouts, a managed proxy's cached snapshot) live there and survive the container.
# Two stages. The build stage makes the wheel: setup.py compiles the hot path with mypyc there, which needs
# a C compiler and Python's headers (the full python image has both; without them the wheel is pure
# Python and serves the same, slower). The image itself gets only the wheels, no compiler.
# BASE_IMAGE: any image with Python >= 3.11 and its venv module; BUILD_IMAGE must have the same Python
# version (the compiled wheel is for one). A wheels/ folder in the build context, if there is one, is used
# as it is and installed from with no index at all: an offline build (`pip wheel --wheel-dir wheels .`
# first; CI builds that way on a Debian rootfs imported offline, with BUILD_IMAGE=BASE_IMAGE).
ARG BASE_IMAGE=python:3.12-slim
ARG BUILD_IMAGE=python:3.12
FROM ${BUILD_IMAGE} AS build
COPY . /src
RUN if [ -d /src/wheels ]; then cp -r /src/wheels /wheels; \
    else python3 -m pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels /src; fi

FROM ${BASE_IMAGE}
COPY --from=build /wheels /wheels
COPY config/container.yaml config/container-controller.yaml /tmp/turnout-config/
RUN python3 -m venv /opt/turnout \
    && /opt/turnout/bin/pip install --no-cache-dir --disable-pip-version-check --no-index --find-links /wheels turnout \
    && rm -rf /wheels \
    && mkdir -p /var/lib/turnout && cp /tmp/turnout-config/container.yaml /var/lib/turnout/turnout.yaml \
    && cp /tmp/turnout-config/container-controller.yaml /var/lib/turnout/controller.yaml \
    && rm -rf /tmp/turnout-config \
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
