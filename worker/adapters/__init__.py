"""The adapters: the I/O shell, one sub-package per protocol, never importing each other."""
