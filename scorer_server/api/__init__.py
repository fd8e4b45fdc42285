"""The gRPC edge: protobuf conversion, validation, the servicer (with live moderation's stop rule) and
its interceptors."""
