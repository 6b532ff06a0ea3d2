"""Foreign trace formats -> normalized store rows, one module per format."""
