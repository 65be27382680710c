#!/bin/sh
# The entrypoint of Turnout's image (the Dockerfile copies it to /usr/local/bin/turnout-entrypoint):
# `turnout "$@"`. For the two servers, `proxy` and `controller`, it first records which config file the
# process runs on, as the link /run/turnout/config.yaml. Two things read it: the HEALTHCHECK
# (turnout-health asks the address that config gives the process), and the CLI in the container
# (TURNOUT_CONFIG points at the link), so `docker exec CONTAINER turnout status` talks to the process's
# own API with its own token.
set -eu
record=/run/turnout/config.yaml
case "${1:-}" in
    proxy) config=config/turnout.yaml ;;          # the defaults of `turnout proxy` and `turnout controller`
    controller) config=config/controller.yaml ;;
    *) exec turnout "$@" ;;
esac
previous=""
for arg in "$@"; do
    [ "$previous" = "--config" ] && config=$arg
    case "$arg" in --config=*) config=${arg#--config=} ;; esac
    previous=$arg
done
case "$config" in /*) ;; *) config="$PWD/$config" ;; esac
ln -sfn "$config" "$record" 2>/dev/null \
    || echo "turnout-entrypoint: cannot write $record: the health check and the CLI in this container will not find $config" >&2
exec turnout "$@"
