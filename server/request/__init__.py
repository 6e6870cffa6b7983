"""A job's request: its one definition (model.py), the API's validation built from it (schema.py), and the
server's policy that turns a validated body into what the engine runs (resolve.py). docs/architecture.md."""
