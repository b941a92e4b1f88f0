"""ml_collections configs, one file per dataset, each exposing `get_config(variant)`."""
