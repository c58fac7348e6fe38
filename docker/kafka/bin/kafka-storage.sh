#!/bin/sh
# kafka-storage.sh: KRaft storage (format, random-uuid, info); the entrypoint formats with it.
exec "$(dirname "$0")/kafka-run-class.sh" kafka.tools.StorageTool "$@"
