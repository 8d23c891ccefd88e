# Sourced: exports the settings of the distributed assembly on the local infra (make infra-up).
# Usage: source scripts/distributed_env.sh <namespace>   (namespace isolates database, S3 prefix, topics)
_ns=${1:-stack}
_state=${HANZO_INFRA_STATE:-$HOME/.cache/hanzo-registry/infra/run}
set -a; source "$_state/infra.env"; set +a
export HANZO_REGISTRY_METADATA__KIND=mongo HANZO_REGISTRY_METADATA__URI=$HANZO_TEST_MONGO_URI
export HANZO_REGISTRY_METADATA__DATABASE=hanzo_registry_${_ns//[^a-zA-Z0-9]/_}
export HANZO_REGISTRY_STORAGE__BLOBS__KIND=s3 HANZO_REGISTRY_STORAGE__BLOBS__ENDPOINT=$HANZO_TEST_S3_ENDPOINT
export HANZO_REGISTRY_STORAGE__BLOBS__ACCESS_KEY=$HANZO_TEST_S3_ACCESS_KEY
export HANZO_REGISTRY_STORAGE__BLOBS__SECRET_KEY=$HANZO_TEST_S3_SECRET_KEY
export HANZO_REGISTRY_STORAGE__BLOBS__BUCKET=${HANZO_TEST_S3_BUCKET}
export HANZO_REGISTRY_STORAGE__BLOBS__PREFIX=$_ns
export HANZO_REGISTRY_EVENTS__KIND=kafka HANZO_REGISTRY_EVENTS__BOOTSTRAP_SERVERS=$HANZO_TEST_KAFKA
for _t in manifests tags blobs scans signatures replication gc audit; do
  export "HANZO_REGISTRY_TOPICS__${_t^^}=$_ns.registry.$_t"
done
unset _ns _state _t
