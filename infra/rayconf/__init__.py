"""Ray-side configs the operator renders from stack outputs: cluster.yaml and the Serve config.

They run where the operator runs, not on the hosts, so they live outside `ray_cluster/` and
outside the node image and its content hash: editing them never replaces an instance.
"""
