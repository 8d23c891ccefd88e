"""Generated protobuf package services.core.proto; do not edit (regenerate with `make proto`)."""
