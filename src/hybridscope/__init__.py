"""hybridscope: where hybrid Mamba-Transformer-MoE inference spends its tail latency.

live capture / ingest -> store (one DuckDB file) -> attribute (kernel -> layer) -> analyze -> present.
The reference engine (`hybridscope.engine`) stands beside that flow and imports none of it.
"""

__version__ = "0.1.0"


def capture(*args, **kwargs):
    """Arm live capture of a PyTorch model; see `hybridscope.live.session.capture`."""
    from hybridscope.live.session import capture as _capture

    return _capture(*args, **kwargs)
