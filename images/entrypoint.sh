#!/bin/sh
# The node image's entrypoint. `docker run IMAGE head|worker|deploy|status|healthcheck ...` runs the node
# (python3 -m ray_cluster.node, ray_cluster.contract.IMAGE_ENTRYPOINT); any other command runs
# as given, e.g. `docker run --rm IMAGE python3 -c "import ray, vllm"`.
case "${1:-}" in
  head | worker | deploy | status | healthcheck | -h | --help | "") exec python3 -m ray_cluster.node "$@" ;;
  *) exec "$@" ;;
esac
