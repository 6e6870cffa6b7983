"""The HTTP API (FastAPI): a thin layer over jobs.service. The contract is docs/api.md."""
