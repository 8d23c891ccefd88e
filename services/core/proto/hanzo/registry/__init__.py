"""Generated protobuf package services.core.proto.hanzo.registry; do not edit (regenerate with `make proto`)."""
