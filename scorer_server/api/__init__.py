"""The gRPC edge: protobuf conversion, validation, the servicer and its interceptors."""
