"""Conduit: real-time delivery of message streams from backend services to browsers.

The services live in the top-level packages ``broker``, ``publish_grpc`` and
``gateway_http``. This package contains what they share (wire format, settings,
errors, logging, the HTTP server runner) and the ``conduit`` command line.
Importing it loads none of the services.
"""

__version__ = "0.1.0"
