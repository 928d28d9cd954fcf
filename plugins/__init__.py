"""First-party vqabench plugins, installed as the import package ``vqabench_plugins``."""
