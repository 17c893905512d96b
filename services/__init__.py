"""Domain and storage of docsach. Knows nothing about any chat platform."""
