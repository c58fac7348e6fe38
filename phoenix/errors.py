"""The model library's one error root: `PhoenixError` covers every error phoenix/ raises on
purpose (a configuration that cannot describe a working model, a checkpoint that cannot be
loaded). phoenix/ knows nothing of the worker; the worker's own root is
`worker.errors.WorkerError`."""


class PhoenixError(Exception):
    """Root of every error the model library raises on purpose."""
