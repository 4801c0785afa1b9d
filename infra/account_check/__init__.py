"""Account preflight: can this stack's GPUs, AMI and weights exist, before `pulumi up` creates anything?

`run_checks(inputs, clients)` is the core: plain data in, a list of `Check` out. The boto3
clients come from `make_clients`, which builds ordinary clients, so the standard
`AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>` variables point them at any
AWS-compatible endpoint; tests inject moto-pointed and Stubber-wrapped clients instead.
"""
