"""The Docker secrets-engine resolver API, served by the mount daemon on unix sockets.

`ids` engine IDs, patterns and their map to refs; `service` GetSecrets as pure logic
over the tree (access checks, audit); `messages` the protobuf messages; `server` the
Connect-over-HTTP/1.1 transport in the daemon's trio loop. See docs/resolver.md.
"""
