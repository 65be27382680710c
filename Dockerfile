# Turnout as an edge proxy container:
#   docker build -t turnout . && docker run --rm -p 8080:8080 turnout
# Mount your own config over /etc/turnout/turnout.yaml (it must listen on 0.0.0.0 inside a container).
FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY controller ./controller
RUN pip install --no-cache-dir . && useradd --system --no-create-home turnout \
    && mkdir -p /etc/turnout && chown turnout /etc/turnout
# The directory must be writable: the admin token and the admin state file live beside the config.
COPY --chown=turnout config/container.yaml /etc/turnout/turnout.yaml
USER turnout
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["turnout", "proxy", "--config", "/etc/turnout/turnout.yaml"]
