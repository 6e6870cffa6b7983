"""Jobs: resolving requests, the SQLite job store, job files, and the single GPU worker."""
