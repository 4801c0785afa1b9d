"""What runs on the hosts, inside the node image: the node contract (ports, env names, argv,
docker options, placement bundles), node start/deploy, the driver connection, the placement
check, NIC choice, auth and the Serve app.

Everything in this package ships in the image and feeds its content hash; what runs only where
the operator runs (renderers, the local cluster) lives in `infra/` so editing it never changes
the image tag, the hosts' user data or the instances. An import-linter contract keeps this
package from importing `infra`, `policy`, Pulumi or boto3.
"""
