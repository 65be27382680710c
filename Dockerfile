# Turnout's image: one image for both processes.
#   make image                                                            # offline: no registry (docs/docker.md)
#   docker build -t turnout .                                             # online: python:3.12 from a registry
#   docker run --rm -p 8080:8080 turnout                                   # the proxy, default config
#   docker run --rm turnout controller --config /var/lib/turnout/controller.yaml
# /var/lib/turnout holds the configs, their tokens and state files (admin changes, the controller's
# rollouts, a managed proxy's cached snapshot). It is not a VOLUME: each container keeps its state in
# its own layer (kept across restarts, gone with the container) and leaves no anonymous volume behind;
# mount a named volume or a directory there for state that outlives the container
# (`-v turnout-state:/var/lib/turnout`).
# Two stages. The build stage makes the wheel: setup.py compiles the hot path with mypyc there, which needs
# a C compiler and Python's headers (the full python image has both; without them the wheel is pure
# Python and serves the same, slower). The image itself gets only the wheels, no compiler.
# BASE_IMAGE: any image with Python >= 3.11 and its venv module; BUILD_IMAGE must have the same Python
# version (the compiled wheel is for one). A wheels/ folder in the build context, if there is one, is used
# as it is and installed from with no index at all: an offline build. Its wheels must be built by the
# same Python version as BASE_IMAGE's (`make image` builds them with .venv's Python on a Debian base
# whose Python it checks, and passes BUILD_IMAGE=BASE_IMAGE).
ARG BASE_IMAGE=python:3.12-slim
ARG BUILD_IMAGE=python:3.12
FROM ${BUILD_IMAGE} AS build
COPY . /src
RUN if [ -d /src/wheels ]; then cp -r /src/wheels /wheels; \
    else python3 -m pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels /src; fi

FROM ${BASE_IMAGE}
COPY --from=build /wheels /wheels
COPY config/container.yaml config/container-controller.yaml /tmp/turnout-config/
COPY image/entrypoint.sh /usr/local/bin/turnout-entrypoint
COPY image/health.py /usr/local/bin/turnout-health
RUN python3 -m venv /opt/turnout \
    && { /opt/turnout/bin/pip install --no-cache-dir --disable-pip-version-check --no-index --find-links /wheels turnout \
         || { echo "wheels/ has no wheels for this image's $(python3 -V): build them with that Python version" \
                   "(docs/docker.md)" >&2; exit 1; }; } \
    && rm -rf /wheels \
    && chmod 755 /usr/local/bin/turnout-entrypoint /usr/local/bin/turnout-health \
    && mkdir -p /var/lib/turnout /run/turnout && cp /tmp/turnout-config/container.yaml /var/lib/turnout/turnout.yaml \
    && cp /tmp/turnout-config/container-controller.yaml /var/lib/turnout/controller.yaml \
    && rm -rf /tmp/turnout-config \
    && useradd --system --home-dir /var/lib/turnout --shell /usr/sbin/nologin turnout \
    && chown -R turnout /var/lib/turnout /run/turnout \
    && chmod 1777 /run/turnout
# /run/turnout (the entrypoint's record) is writable by any user the container runs as, like /tmp.
# TURNOUT_CONFIG: the CLI in the container (`docker exec CONTAINER turnout status`) talks to the API of
# the config the entrypoint recorded, with its token (docs/docker.md).
ENV PATH=/opt/turnout/bin:$PATH \
    TURNOUT_CONFIG=/run/turnout/config.yaml
WORKDIR /var/lib/turnout
USER turnout
EXPOSE 8080 9901 9911
STOPSIGNAL SIGTERM
# Asks the address the running proxy's or controller's config gives it (GET /ready needs no token); passes
# in a container that runs no Turnout (an app image built FROM this one: give it its own HEALTHCHECK);
# TURNOUT_HEALTH_URL overrides. See image/health.py.
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 CMD ["/usr/local/bin/turnout-health"]
ENTRYPOINT ["/usr/local/bin/turnout-entrypoint"]
CMD ["proxy", "--config", "/var/lib/turnout/turnout.yaml"]
