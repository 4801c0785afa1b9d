"""Cluster side of llmfleet.

Two kinds of module live here, and only the first ships in the node image:

- HOST_MODULES run on the hosts, inside the image: the node contract, node start/deploy,
  the driver connection, the preflight, NIC choice, auth and the Serve app;
- the rest (cluster.yaml and Serve config renderers, the local cluster, its hosts and the
  tiny model) run where the operator runs. They are kept out of the image's build context and
  its content hash (infra/components/image.py, .dockerignore), so editing them never changes
  the image tag, the hosts' user data or the instances. An import-linter contract keeps host
  modules from importing them.
"""

HOST_MODULES = ("__init__", "auth", "contract", "driver", "nic", "node", "preflight", "serve_app")
