"""The host boot contract: what a host runs at boot (cloud-init on EC2, SSH on hosts you own).

The node spec, env file, docker options and ECR login are rendered here once; `cloud_init`
puts them in EC2 user data and `ssh_bootstrap` runs the same steps over SSH.
"""
