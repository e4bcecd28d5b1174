"""Memory test utilities and the batchmem pytest plugin (registered through the ``pytest11`` entry point)."""
