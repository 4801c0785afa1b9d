"""The operator's side of a checkpoint: read it (headers only), check it against the stack's
model, upload it to the stack's weights location with a manifest, and verify the upload.

checkpoint.py  the local files, config.json and the safetensors headers -> facts; the check
manifest.py    manifest.json, exactly what the hosts' staging verifies (infra/boot/cloud_init.py)
s3.py          the upload (boto3's transfer manager, resumable) and the bucket-side verify
hub.py         `--from hf:ORG/NAME`: huggingface_hub's snapshot_download, one-line failures
"""
