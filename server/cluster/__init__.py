"""[cluster] backend = "ray": the head keeps the queue, store and API; generation runs on the cluster's GPUs.

Imported only with that backend: the single-box install never needs Ray (pip install -e ".[cluster]" adds it).
"""
