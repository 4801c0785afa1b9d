"""The local cluster: N "hosts" on this machine (network namespaces or loopback) running the
same node code and Serve app as production, on vLLM's CPU build, with a generated tiny model.
"""
