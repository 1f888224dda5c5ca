"""The publish service: backends send PublishRequests over gRPC or HTTP, each lands in its channel's stream."""

from publish_grpc.server import PublishServer

__all__ = ["PublishServer"]
