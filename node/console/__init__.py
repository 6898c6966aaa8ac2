"""The operators' web console (``docs/console.md``): static pages served by the node itself on
``console.port``, which read and act through the node's own HTTP API routes."""
