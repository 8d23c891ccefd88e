"""Generated protobuf package services.core.proto.hanzo.registry.v1; do not edit (regenerate with `make proto`)."""
