"""localcloud's APIs over HTTP/JSON, as Google serves them beside gRPC (``front.py``)."""
